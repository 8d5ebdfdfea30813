//! The process's limit of open files (`RLIMIT_NOFILE`): raised from the
//! soft to the hard limit at start, since a store holds a file per open
//! segment and every service a socket per connection, and the soft limit
//! (often 1024) is a leftover default, not a decision.

/// The limit of open files; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before the raise.
    pub soft_before: Option<u64>,
    /// The soft limit now.
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The soft limit to set for `soft` and `hard` (`None`: unlimited), or
/// `None` when it is already as high as allowed.
pub fn raised_soft_limit(soft: Option<u64>, hard: Option<u64>) -> Option<Option<u64>> {
    match (soft, hard) {
        (None, _) => None,
        (Some(soft), Some(hard)) if soft >= hard => None,
        (Some(_), hard) => Some(hard),
    }
}

fn from_rlim(value: libc::rlim_t) -> Option<u64> {
    (value != libc::RLIM_INFINITY).then_some(value)
}

fn to_rlim(value: Option<u64>) -> libc::rlim_t {
    value.unwrap_or(libc::RLIM_INFINITY)
}

/// Raises the soft limit of open files to the hard limit (idempotent);
/// logs the change. A refusal is logged and the limit left as it was.
pub fn raise_open_file_limit() -> std::io::Result<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let soft_before = from_rlim(limit.rlim_cur);
    let hard = from_rlim(limit.rlim_max);
    let Some(soft) = raised_soft_limit(soft_before, hard) else {
        return Ok(FileLimit {
            soft_before,
            soft: soft_before,
            hard,
        });
    };
    let raised = libc::rlimit {
        rlim_cur: to_rlim(soft),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, ?soft_before, ?hard, "cannot raise the limit of open files");
        return Err(error);
    }
    tracing::info!(
        ?soft_before,
        ?soft,
        ?hard,
        "raised the limit of open files (RLIMIT_NOFILE) to the hard limit"
    );
    Ok(FileLimit {
        soft_before,
        soft,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit_only_when_lower() {
        assert_eq!(raised_soft_limit(Some(1024), Some(4096)), Some(Some(4096)));
        assert_eq!(raised_soft_limit(Some(1024), None), Some(None));
        assert_eq!(raised_soft_limit(Some(4096), Some(4096)), None);
        assert_eq!(raised_soft_limit(None, None), None);
        assert_eq!(raised_soft_limit(Some(0), Some(0)), None);
        assert_eq!(
            raised_soft_limit(Some(0), Some(u64::MAX)),
            Some(Some(u64::MAX))
        );
    }

    #[test]
    fn raising_is_idempotent_and_reaches_the_hard_limit() {
        let first = raise_open_file_limit().expect("raise");
        assert_eq!(first.soft, first.hard);
        let second = raise_open_file_limit().expect("raise again");
        assert_eq!(second.soft_before, first.soft);
        assert_eq!(second.soft, second.hard);
    }
}
