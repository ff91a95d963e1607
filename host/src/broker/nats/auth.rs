//! Connecting with credentials: the user and password (or token) a
//! broker URL carries, which async-nats does not read from a URL itself.

/// How to connect to `server`: with the user and password (or the token)
/// its URL carries, `nats://USER:PASSWORD@HOST:PORT` or
/// `nats://TOKEN@HOST:PORT` (percent-encoded), which async-nats itself
/// does not read from a URL; and the server's URL without them, to connect
/// to and to name in errors (never the password).
pub fn connect_options(server: &str) -> (async_nats::ConnectOptions, String) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let Some((scheme, rest)) = server.split_once("://") else {
        return (async_nats::ConnectOptions::new(), server.to_string());
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return (async_nats::ConnectOptions::new(), server.to_string());
    };
    let bare = format!("{scheme}://{host}");
    let options = match userinfo.split_once(':') {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(decode(user), decode(password))
        }
        None => async_nats::ConnectOptions::with_token(decode(userinfo)),
    };
    (options, bare)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_come_out_of_the_url() {
        let (_, bare) = super::connect_options("nats://troupe:p%40ss@127.0.0.1:4222");
        assert_eq!(bare, "nats://127.0.0.1:4222");
        let (_, bare) = super::connect_options("nats://s3cr3t@nats.internal:4222");
        assert_eq!(bare, "nats://nats.internal:4222");
        let (_, bare) = super::connect_options("nats://127.0.0.1:4222");
        assert_eq!(bare, "nats://127.0.0.1:4222");
    }
}
