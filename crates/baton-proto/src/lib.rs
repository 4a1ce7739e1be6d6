//! Wire types shared by every Baton process: ids, machines, sessions, transcript entries, handoffs,
//! HTTP bodies and WebSocket frames.
//!
//! This crate only describes shapes; it never performs I/O and never holds key material. Anything
//! that crosses a process boundary is defined here and nowhere else.

pub mod api;
pub mod error;
pub mod handoff;
pub mod ids;
pub mod machine;
pub mod sealed;
pub mod session;
pub mod transfer;
pub mod workspace;
pub mod ws;

pub use error::{ApiError, ErrorCode};
pub use handoff::{
    DirectTarget, HandoffOptions, HandoffPhase, HandoffRecord, HandoffResult, PhaseRecord,
};
pub use ids::{AccountId, HandoffId, InputId, MachineId, SessionId};
pub use machine::{
    AuthState, HandoffSupport, MachineInfo, MachineKind, ProviderInfo, ProviderSessionInfo,
    VersionCheck,
};
pub use sealed::{Bytes, Sealed};
pub use session::{
    EntryBody, EntryRole, ForkOf, InputRecord, OpenPermission, PermissionAnswer, PermissionNote,
    SealedEntry, ServiceRecord, ServiceSecret, SessionMeta, SessionMode, SessionRecord,
    SessionStatus, SettingRecord, open_permissions,
};

/// Version of the HTTP/WebSocket protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest WebSocket message either side accepts (bytes).
pub const MAX_WS_MESSAGE: usize = 16 * 1024 * 1024;

/// Largest HTTP request body the server accepts for JSON calls (bytes).
pub const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// Largest sealed provider-state bundle accepted for one handoff (bytes).
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024 * 1024;

/// Milliseconds since the Unix epoch; every timestamp on the wire uses this unit.
pub type Millis = i64;

/// Current time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
