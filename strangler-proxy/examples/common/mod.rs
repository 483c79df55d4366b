//! What the servers `scripts/bench` runs (`bench_upstream`, `naive_proxy`) share: reading a
//! flag's value from the command line, binding, and the accept loop.

use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The command-line argument after `flag`, parsed. The error names the flag, and the value when
/// it does not parse; `what` says what the flag takes ("an address").
pub fn flag_value<T>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
    what: &str,
) -> Result<T, String>
where
    T: FromStr,
    T::Err: Display,
{
    let value = args.next().ok_or_else(|| format!("{flag} needs {what}"))?;
    value.parse().map_err(|e| format!("{flag} {value}: {e}"))
}

/// Binds `listen` and says so on stdout: `NAME listening on ADDR`.
pub async fn bind(name: &str, listen: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(listen).await?;
    println!("{name} listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// The next connection on `listener`, with `TCP_NODELAY` set. A failed accept (out of
/// descriptors under a connection storm) is reported on stderr and waited out for 10 ms
/// instead of spun on.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
