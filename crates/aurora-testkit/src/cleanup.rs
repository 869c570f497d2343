//! What a namespace left behind, deleted at the end of a test, also when it fails.

use std::time::Duration;

use aurora_core::Names;

/// Deletes what a namespace left: its JetStream streams on `nats_url` and its keys in each
/// Redis URL given.
pub async fn cleanup(names: &Names, nats_url: &str, redis_urls: &[&str]) {
    crate::nats::delete_streams(nats_url, names).await;
    for url in redis_urls {
        if let Ok(mut conn) = aurora_core::bus::connect(url).await {
            crate::redis::delete_namespace(&mut conn, names).await;
        }
    }
}

/// Runs [`cleanup`] when dropped, also when the test fails: declare it right after the names,
/// so that it runs after the services are gone.
pub struct Cleanup {
    names: Names,
    nats_url: String,
    redis_urls: Vec<String>,
}

impl Cleanup {
    pub fn new(names: &Names, nats_url: &str, redis_urls: &[&str]) -> Self {
        Self {
            names: names.clone(),
            nats_url: nats_url.to_string(),
            redis_urls: redis_urls.iter().map(|u| u.to_string()).collect(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (names, nats_url) = (self.names.clone(), self.nats_url.clone());
        let urls = std::mem::take(&mut self.redis_urls);
        crate::block_on_own_runtime(async move {
            let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
            let _ =
                tokio::time::timeout(Duration::from_secs(15), cleanup(&names, &nats_url, &refs))
                    .await;
        });
    }
}
