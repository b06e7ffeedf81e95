//! The id of each request: random, shown as 16 hex digits in its
//! `X-Request-Id` header, on each of its log lines and in the body of a
//! 500. The server sets it for the task serving the request.

use std::future::Future;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// A request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(u64);

impl RequestId {
    /// A fresh random id.
    pub fn random() -> RequestId {
        RequestId(rand::random())
    }

    /// The id of the request this task is serving, if any.
    pub fn current() -> Option<RequestId> {
        CURRENT.try_with(|id| *id).ok()
    }

    /// Runs `future` as the task serving the request with this id.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_are_16_hex_digits_and_known_inside_their_scope_only() {
        assert_eq!(RequestId(0xabc).to_string(), "0000000000000abc");
        assert_ne!(RequestId::random(), RequestId::random());
        let id = RequestId::random();
        assert_eq!(id.scope(async { RequestId::current() }).await, Some(id));
        assert_eq!(RequestId::current(), None);
    }
}
