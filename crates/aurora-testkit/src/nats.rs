//! JetStream as a test sees it: every message of a stream, and a namespace's streams deleted.

use aurora_core::Names;

/// Every message of a JetStream stream: (`Nats-Msg-Id` header or "", subject, payload).
pub async fn jetstream_messages(nats_url: &str, stream: &str) -> Vec<(String, String, Vec<u8>)> {
    let client = async_nats::connect(servers(nats_url))
        .await
        .unwrap_or_else(|e| panic!("NATS at {nats_url}: {e}"));
    let js = async_nats::jetstream::new(client);
    let mut s = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("the stream {stream} exists: {e}"));
    let info = s.info().await.expect("stream info").clone();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in first..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((id, m.subject.to_string(), m.payload.to_vec()));
        }
    }
    out
}

/// How many messages a JetStream stream holds (0 when it does not exist).
pub async fn stream_len(nats_url: &str, stream: &str) -> u64 {
    let Ok(client) = async_nats::connect(servers(nats_url)).await else {
        return 0;
    };
    let js = async_nats::jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Deletes the namespace's JetStream streams (`NS`, `NS_SURICATA`); errors are ignored.
pub async fn delete_streams(nats_url: &str, names: &Names) {
    if let Ok(client) = async_nats::connect(servers(nats_url)).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(names.nats_stream()).await;
        let _ = js.delete_stream(names.suricata_stream()).await;
    }
}

/// The servers of a comma-separated list of NATS URLs (a cluster's).
pub fn servers(nats_url: &str) -> Vec<async_nats::ServerAddr> {
    nats_url
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}
