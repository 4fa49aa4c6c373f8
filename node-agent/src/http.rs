//! The HTTP side of a node component: `/metrics` (Prometheus text from a render function) and
//! `/health`, `/ready`, `/live`. Small on purpose: one request per connection, no keep-alive.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Renders the Prometheus text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `/metrics` with `render`, and the health paths, until the listener fails.
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let (status, body) = match head.split_whitespace().nth(1).unwrap_or("/") {
                "/metrics" => ("200 OK", render()),
                "/health" | "/ready" | "/live" => ("200 OK", "ok\n".to_string()),
                _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
