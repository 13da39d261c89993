//! Wall-clock time and tokio sleeps.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mala_core::Clock;

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleep_waits_on_tokio_time() {
        let clock: &dyn Clock = &SystemClock;
        let before = tokio::time::Instant::now();
        clock.sleep(Duration::from_secs(90)).await;
        assert_eq!(before.elapsed(), Duration::from_secs(90));
    }

    #[test]
    fn now_moves_forward() {
        let first = SystemClock.now();
        assert!(SystemClock.now() >= first);
    }
}
