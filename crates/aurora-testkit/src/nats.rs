//! JetStream as a test sees it: every message of a stream, and a namespace's streams deleted.

use aurora_core::Names;

/// Every message of a JetStream stream: (`Nats-Msg-Id` header or "", subject, payload).
/// A message that cannot be read is left out.
pub async fn jetstream_messages(nats_url: &str, stream: &str) -> Vec<(String, String, Vec<u8>)> {
    read_messages(nats_url, stream, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`jetstream_messages`], or why they could not all be read now (a cluster electing a
/// leader answers nothing for a while): for a test that reads while servers come and go.
pub async fn try_jetstream_messages(
    nats_url: &str,
    stream: &str,
) -> Result<Vec<(String, String, Vec<u8>)>, String> {
    read_messages(nats_url, stream, true).await
}

/// The messages of `stream`; `strict`: a message that cannot be read is an error, not left out.
async fn read_messages(
    nats_url: &str,
    stream: &str,
    strict: bool,
) -> Result<Vec<(String, String, Vec<u8>)>, String> {
    let client = async_nats::connect(servers(nats_url))
        .await
        .map_err(|e| format!("NATS at {nats_url}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("the stream {stream} exists: {e}"))?;
    let info = s
        .info()
        .await
        .map_err(|e| format!("stream info: {e}"))?
        .clone();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    for seq in first..=last {
        match s.get_raw_message(seq).await {
            Ok(m) => {
                let id = m
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                out.push((id, m.subject.to_string(), m.payload.to_vec()));
            }
            // A sequence without a message (deleted, or the stream's limits) is no error.
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) if strict => return Err(format!("message {seq} of {stream}: {e}")),
            Err(_) => {}
        }
    }
    Ok(out)
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
