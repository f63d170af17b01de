-- Rescheduling (`POST /v{1,2}/bookings/{id}/reschedule`): a hold or a confirmed booking moves
-- to another window of the same vehicle by updating its own row's `period`, so the booking holds
-- exactly one window at every moment, and the exclusion constraint (`bookings_no_overlap`, on the
-- occupied range the `bookings_occupied` trigger keeps, turnaround buffer included) refuses a
-- move onto another booking under any concurrency.
--
-- Each move is kept on the booking (from, to, the price difference, the change fee) as its
-- extensions are, for the v2 body, and recorded in `booking_history` (event `reschedule`).
alter table bookings
    add column reschedules jsonb not null default '[]'::jsonb;

-- The event of a move. Added `not valid`, then validated: the validation scans the outbox under
-- a lock that lets the relay and new writes go on.
alter table outbox drop constraint outbox_topic_check;
alter table outbox add constraint outbox_topic_check
    check (topic in ('booking.created', 'booking.cancelled', 'booking.extended',
                     'vehicle.reserved', 'vehicle.released', 'booking.confirmed',
                     'booking.started', 'booking.completed', 'booking.failed',
                     'booking.rescheduled')) not valid;
alter table outbox validate constraint outbox_topic_check;
