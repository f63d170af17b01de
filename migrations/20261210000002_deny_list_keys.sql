-- The deny list also names apps' API keys (domain::deny::DenyTarget::Key): field `k:<key id>`,
-- which the edge script adds to a request's fields from the key's plan.
alter table deny_list drop constraint deny_list_kind_check;
alter table deny_list
    add constraint deny_list_kind_check check (kind in ('network', 'user', 'key'));
