//! A connection's time limits, each kept as one tokio timer for the
//! connection's whole life and moved to the next request's deadline.
//!
//! A fresh timer per request (hyper's header-read limit, our whole-request
//! limit) costs an allocation, a registration in tokio's timer wheel (a
//! lock) when it is first waited on, and a deregistration (the lock again)
//! when dropped, twice per request. A timer moved to a later deadline
//! before it fires is only an atomic update in tokio
//! (`TimerEntry::reset` extends the expiration in place; the wheel
//! re-files it when the old deadline comes round), so keep-alive requests
//! reuse their connection's two timers instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// One reusable timer: lent out to one waiter at a time, returned when
/// that waiter drops it.
#[derive(Clone, Default)]
pub struct Reused(Arc<Mutex<Option<Pin<Box<Sleep>>>>>);

impl Reused {
    /// A timer that fires at `deadline`: this one's, moved there, or a
    /// fresh one while it is lent out.
    pub fn sleep_until(&self, deadline: Instant) -> Lent {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline.into());
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline.into())),
        };
        Lent {
            sleep: Some(sleep),
            home: self.clone(),
        }
    }
}

/// A lent timer; dropping it gives it back.
pub struct Lent {
    sleep: Option<Pin<Box<Sleep>>>,
    home: Reused,
}

impl Lent {
    fn reset(&mut self, deadline: Instant) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(deadline.into());
        }
    }
}

impl Future for Lent {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut slot = self.home.0.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(sleep);
            }
        }
    }
}

impl hyper::rt::Sleep for Lent {}

/// hyper's timer for one connection (it times the reading of each
/// request head with it), reusing one tokio timer.
#[derive(Clone, Default)]
pub struct ConnTimer {
    timer: Reused,
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.timer.sleep_until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Lent>() {
            Some(lent) => lent.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_fires_at_each_new_deadline() {
        let timer = Reused::default();
        let start = Instant::from(tokio::time::Instant::now());
        // Lent, waited on, given back before it fires.
        let first = timer.sleep_until(start + Duration::from_secs(10));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), first)
                .await
                .is_err()
        );
        assert!(timer.0.lock().unwrap().is_some());
        // The same timer, moved later: it fires then, not at the old time.
        let second = timer.sleep_until(start + Duration::from_secs(30));
        assert!(timer.0.lock().unwrap().is_none());
        let waited = tokio::time::Instant::now();
        second.await;
        let now = Instant::from(tokio::time::Instant::now());
        assert_eq!(now.duration_since(start), Duration::from_secs(30));
        assert!(tokio::time::Instant::now() > waited);
        // Moved earlier than where it stood, it fires at the earlier time.
        let third = timer.sleep_until(now + Duration::from_secs(5));
        third.await;
        let later = Instant::from(tokio::time::Instant::now());
        assert_eq!(later.duration_since(now), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn while_one_is_lent_another_is_made_and_hyper_can_reset_it() {
        use hyper::rt::Timer;
        let timer = ConnTimer::default();
        let start = Instant::from(tokio::time::Instant::now());
        let mut one = timer.sleep_until(start + Duration::from_secs(60));
        let two = timer.sleep_until(start + Duration::from_secs(2));
        two.await;
        assert_eq!(
            Instant::from(tokio::time::Instant::now()).duration_since(start),
            Duration::from_secs(2)
        );
        timer.reset(&mut one, start + Duration::from_secs(3));
        one.await;
        assert_eq!(
            Instant::from(tokio::time::Instant::now()).duration_since(start),
            Duration::from_secs(3)
        );
    }
}
