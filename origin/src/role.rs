//! Roles: what one origin process does, so one image runs as every Deployment.
//!
//! `origin serve --role <role>` (or `ORIGIN_ROLE`; the flag wins; default `all`):
//!
//! | role      | HTTP routes (besides health, readiness, metrics, `/openapi.json`) | background jobs |
//! |-----------|-------------------------------------------------------------|-----------------|
//! | `all`     | every route                                                 | every job, unelected (one process, dev and tests) |
//! | `api`     | every route                                                 | Redis probes, in-process surge grid |
//! | `pricing` | search, quotes, surge, pricing admin                        | Redis probes, in-process surge grid |
//! | `booking` | the booking write and read path                             | Redis probes |
//! | `relay`   | none                                                        | the outbox relay (lanes shared by advisory locks), the availability consumer (a consumer group) |
//! | `jobs`    | none                                                        | sweeper, surge refresh, availability index rebuild, each only while this replica is the elected leader ([`crate::jobs::leader`]) |
//!
//! A route another role serves answers 404 problem+json, like any unknown path: an ingress that
//! sends a request to the wrong Deployment is a routing bug to see, not to paper over.
//!
//! `booking` never calls pricing: a hold carries a signed quote, which the booking path
//! verifies with the quote-signing keys and trusts (`domain::quote`); only an extension prices
//! its extra time, from the database in the booking's own transaction.
//!
//! The pricing role keeps its own surge grid fresh (the quote path reads the grid in process,
//! never waiting on Redis), so the grid is computed by every pricing replica once per
//! `SURGE_RECOMPUTE_SECS`; the `jobs` leader computes it too, which keeps the L2 copy fresh for
//! replicas that just started.

use std::fmt;
use std::str::FromStr;

/// What this process serves and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Every route and every job (one process: development, tests, small deployments).
    #[default]
    All,
    /// Every route, no singleton jobs.
    Api,
    /// Search, quotes, surge, pricing administration.
    Pricing,
    /// Holds and bookings.
    Booking,
    /// The outbox relay only.
    Relay,
    /// The sweeper, surge refresh and index rebuilds, under leader election.
    Jobs,
}

/// Which routes a role serves, by group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteGroup {
    /// Search, quotes, surge, pricing administration.
    Pricing,
    /// Holds and bookings.
    Booking,
}

impl Role {
    /// Every role, in the order of the table above.
    pub const ALL: [Role; 6] = [
        Role::All,
        Role::Api,
        Role::Pricing,
        Role::Booking,
        Role::Relay,
        Role::Jobs,
    ];

    /// The name used by `--role` and `ORIGIN_ROLE`.
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Pricing => "pricing",
            Role::Booking => "booking",
            Role::Relay => "relay",
            Role::Jobs => "jobs",
        }
    }

    /// Whether this role serves `group`'s routes.
    pub(crate) fn serves(self, group: RouteGroup) -> bool {
        match self {
            Role::All | Role::Api => true,
            Role::Pricing => group == RouteGroup::Pricing,
            Role::Booking => group == RouteGroup::Booking,
            Role::Relay | Role::Jobs => false,
        }
    }

    /// Whether this role keeps an in-process surge grid for its quote path.
    pub(crate) fn prices(self) -> bool {
        matches!(self, Role::All | Role::Api | Role::Pricing)
    }

    /// Whether this role runs the singleton jobs (sweeper, surge refresh, index rebuild).
    pub(crate) fn runs_singletons(self) -> bool {
        matches!(self, Role::All | Role::Jobs)
    }

    /// Whether the singleton jobs wait for the leader lock (only the `jobs` role: `all` is one
    /// process and runs them unelected, as before roles existed).
    pub(crate) fn elects(self) -> bool {
        self == Role::Jobs
    }

    /// Whether this role runs the outbox relay (when `KAFKA_BROKERS` is set).
    pub(crate) fn relays(self) -> bool {
        matches!(self, Role::All | Role::Relay)
    }

    /// Whether this role runs the availability consumer (when `KAFKA_BROKERS` is set and
    /// `EVENT_CONSUMER` is not 0): the event roles, like the relay.
    pub(crate) fn consumes(self) -> bool {
        matches!(self, Role::All | Role::Relay)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown role name.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?} (expected api, booking, pricing, relay, jobs or all)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_parses_from_its_name_and_nothing_else_does() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>().ok(), Some(role));
        }
        assert!("booker".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
    }

    #[test]
    fn pricing_and_booking_split_the_routes_and_relay_and_jobs_serve_none() {
        use RouteGroup::{Booking, Pricing};
        assert!(Role::Pricing.serves(Pricing) && !Role::Pricing.serves(Booking));
        assert!(Role::Booking.serves(Booking) && !Role::Booking.serves(Pricing));
        for role in [Role::Relay, Role::Jobs] {
            assert!(!role.serves(Pricing) && !role.serves(Booking));
        }
        for role in [Role::All, Role::Api] {
            assert!(role.serves(Pricing) && role.serves(Booking));
        }
    }

    #[test]
    fn the_event_roles_and_only_they_run_the_relay_and_the_consumer() {
        for role in Role::ALL {
            let events = matches!(role, Role::All | Role::Relay);
            assert_eq!(role.relays(), events, "{role}");
            assert_eq!(role.consumes(), events, "{role}");
        }
    }
}
