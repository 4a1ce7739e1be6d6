//! Typed identifiers. Each is a UUID; the newtypes keep a session id from being passed where a
//! machine id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id's 16 bytes, as bound into associated data.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// An account: the set of machines and browsers that share one account secret.
    AccountId
);
id_type!(
    /// A machine enrolled in an account.
    MachineId
);
id_type!(
    /// A session; never changes, not even across handoffs.
    SessionId
);
id_type!(
    /// One handoff of a session from one machine to another.
    HandoffId
);
id_type!(
    /// A client-generated id of one input message; makes sending idempotent.
    InputId
);
