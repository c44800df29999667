//! Exit codes and the hint line printed under an error.
//!
//! Scripts branch on the exit code (retry on 4, give up on 3 or 5), so the
//! mapping is a contract and lives here with its tests.

use crate::client::ClientError;
use crate::fleet::FleetError;

pub const OK: u8 = 0;
/// Anything not covered below.
pub const OTHER: u8 = 1;
/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
/// The fleet cannot be reached or cannot serve the object right now.
pub const UNAVAILABLE: u8 = 4;
/// The server refused the request as given (invalid argument, failed precondition).
pub const INVALID: u8 = 5;
/// Missing or wrong credentials, or credentials that do not open this bucket.
pub const DENIED: u8 = 6;

/// The exit code for a failed object operation.
pub fn client_exit_code(err: &ClientError) -> u8 {
    match err {
        ClientError::NotFound(_) => NOT_FOUND,
        ClientError::Unreachable { .. }
        | ClientError::Unavailable(_)
        | ClientError::DeadlineExceeded(_) => UNAVAILABLE,
        ClientError::InvalidArgument(_)
        | ClientError::FailedPrecondition(_)
        | ClientError::AlreadyExists(_)
        | ClientError::InvalidEndpoint { .. } => INVALID,
        ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_) => DENIED,
        _ => OTHER,
    }
}

/// What the person should try next, if there is something useful to say.
pub fn client_hint(err: &ClientError) -> Option<&'static str> {
    Some(match err {
        ClientError::Unreachable { .. } => {
            "is the fleet running? start one with `potluck dev up`, or point --endpoint (or POTLUCK_ENDPOINT) at a running agent"
        }
        ClientError::Unavailable(_) => {
            "too many agents may be down (reads need k of an object's k+m shards, writes the pool's write quorum); retry once they are back, and check the agents' logs"
        }
        ClientError::DeadlineExceeded(_) => "the fleet is slow or overloaded; retry, and check the agents' logs",
        ClientError::NotFound(_) => "check the bucket and key with `potluck ls BUCKET`",
        ClientError::InvalidArgument(_) => "check the arguments; see `potluck <command> --help`",
        ClientError::FailedPrecondition(_) => {
            "the agents may not agree on the cluster map yet, or the pool cannot place data; retry in a moment, and check the agents' logs"
        }
        ClientError::AlreadyExists(_) => "pick another key, or delete the existing object first with `potluck rm`",
        ClientError::ResourceExhausted(_) => "the pool may be out of space, or a limit was hit; free space or add members",
        // Share links say what is wrong with them and what to do; a key hint would mislead.
        ClientError::Unauthenticated(m) | ClientError::PermissionDenied(m)
            if m.contains("share link") || m.contains("share token") =>
        {
            return None
        }
        ClientError::Unauthenticated(_) => {
            "pass the bucket's credentials: --access-key and --secret-key (or POTLUCK_ACCESS_KEY and POTLUCK_SECRET_KEY), or --credentials with its mounted Secret; `kubectl get bucket` names the Secret"
        }
        ClientError::PermissionDenied(_) => {
            "these credentials open another bucket or pool; use the Secret of the Bucket you address, and leave --pool unset"
        }
        ClientError::DataLoss(_) => {
            "more than m shards of this object are lost or damaged; restore it from another copy"
        }
        ClientError::InvalidEndpoint { .. } => "write endpoints as http://HOST:PORT, comma-separated",
        ClientError::InputTooLong { .. } | ClientError::InputTooShort { .. } => {
            "the input changed size while it was read; retry once it is stable"
        }
        ClientError::Truncated { .. } | ClientError::HashMismatch { .. } => {
            "the transfer was damaged or cut short; retry, and report it if it keeps happening"
        }
        _ => return None,
    })
}

/// What to do when the local fleet did not start.
pub fn fleet_hint(err: &FleetError) -> Option<&'static str> {
    Some(match err {
        FleetError::AgentBinNotFound { .. } => {
            "build it with `cargo build --release -p potluck-agent`, or set POTLUCK_AGENT_BIN to its path"
        }
        FleetError::AgentNotReady { .. } | FleetError::AgentExited { .. } => {
            "see the agent's log above; if a port is taken, pass --base-port 0 for free ports or stop the other fleet"
        }
        FleetError::Ports { .. } => "pick a lower --base-port, or 0 for free ports",
        FleetError::Map(_) => "adjust --agents, --k and --m so that k+m agents (one per failure domain) exist",
        FleetError::PushMap { .. } => "an agent refused the cluster map; see its log",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn server_codes_map_to_exit_codes() {
        let code = |s: Status| client_exit_code(&ClientError::from(s));
        assert_eq!(code(Status::not_found("x")), NOT_FOUND);
        assert_eq!(code(Status::unavailable("x")), UNAVAILABLE);
        assert_eq!(code(Status::deadline_exceeded("x")), UNAVAILABLE);
        assert_eq!(code(Status::invalid_argument("x")), INVALID);
        assert_eq!(code(Status::out_of_range("x")), INVALID);
        assert_eq!(code(Status::failed_precondition("x")), INVALID);
        assert_eq!(code(Status::internal("x")), OTHER);
        assert_eq!(code(Status::data_loss("x")), OTHER);
        assert_eq!(code(Status::resource_exhausted("x")), OTHER);
        assert_eq!(code(Status::unauthenticated("x")), DENIED);
        assert_eq!(code(Status::permission_denied("x")), DENIED);
    }

    #[test]
    fn local_failures_map_to_exit_codes() {
        let unreachable = ClientError::Unreachable {
            details: "127.0.0.1:7100: connection refused".into(),
        };
        assert_eq!(client_exit_code(&unreachable), UNAVAILABLE);
        assert!(client_hint(&unreachable)
            .unwrap()
            .contains("potluck dev up"));
        let input = ClientError::Input(std::io::Error::other("disk"));
        assert_eq!(client_exit_code(&input), OTHER);
        let truncated = ClientError::Truncated {
            expected: 10,
            received: 5,
        };
        assert_eq!(client_exit_code(&truncated), OTHER);
        assert!(client_hint(&truncated).is_some());
    }

    #[test]
    fn codes_are_distinct_and_stable() {
        assert_eq!(
            [OK, OTHER, USAGE, NOT_FOUND, UNAVAILABLE, INVALID, DENIED],
            [0, 1, 2, 3, 4, 5, 6]
        );
    }
}
