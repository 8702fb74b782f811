//! Which hosts actions may be fetched from, and who gets the job token.
//! Pure: the caller resolves host names and hands the addresses in.
//!
//! Workflow authors are not trusted: `uses: https://169.254.169.254/x/y@v1`
//! must not make the runner host talk to its cloud's metadata service, nor
//! to anything on its private network. So an action comes only from
//! - the forge's own host (the job's forge URL),
//! - the host of the default actions URL,
//! - a host listed in `[actions] allowed_hosts` (`host` for any port,
//!   `host:port` for one port),
//!
//! and only over `http` or `https`. Every address the host name resolves to
//! must be a public one: loopback, link-local, private (RFC 1918, `fc00::/7`),
//! unspecified, multicast, shared (CGNAT `100.64.0.0/10`) and the IPv4-mapped
//! or -compatible forms of these are refused, unless the host is listed in
//! `[actions] allowed_hosts`. The callers put the hosts of the configured
//! forge URLs and of the operator's default actions URL into that list: they
//! are the operator's own choice, and test forges live on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

/// The config key named in refusals.
pub const ALLOWED_HOSTS_KEY: &str = "[actions] allowed_hosts";

/// A parsed `http(s)` URL with a host, no credentials, query or fragment,
/// and no trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    url: Url,
}

impl HttpUrl {
    /// Parses `text`, adding `https://` when it has no scheme.
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("https://{text}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(format!(
                    "`{text}`: the scheme `{other}` is not allowed (only http and https)"
                ));
            }
        }
        if url.host().is_none() {
            return Err(format!("`{text}` has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "`{text}` holds credentials; put no user name or password in an actions URL"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{text}` has a query or fragment"));
        }
        let mut url = url;
        let path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&path);
        Ok(HttpUrl { url })
    }

    /// The URL as text, without a trailing `/`.
    pub fn as_str(&self) -> &str {
        self.url.as_str().trim_end_matches('/')
    }

    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The host as written in the URL (IPv6 addresses in brackets).
    pub fn host(&self) -> String {
        self.url.host_str().unwrap_or_default().to_owned()
    }

    /// The host without brackets, as a resolver wants it.
    pub fn host_bare(&self) -> String {
        let h = self.host();
        h.trim_start_matches('[').trim_end_matches(']').to_owned()
    }

    /// The host when it is an IP address literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.url.host()? {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            url::Host::Domain(_) => None,
        }
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }

    /// The path without a trailing `/` (`""` for the root).
    pub fn path(&self) -> &str {
        self.url.path().trim_end_matches('/')
    }

    /// `self` with `/segment` appended for each segment.
    pub fn join(&self, segments: &[&str]) -> HttpUrl {
        let mut url = self.url.clone();
        let mut path = url.path().trim_end_matches('/').to_owned();
        for s in segments {
            path.push('/');
            path.push_str(s);
        }
        url.set_path(&path);
        HttpUrl { url }
    }

    fn same_endpoint(&self, other: &HttpUrl) -> bool {
        self.scheme() == other.scheme()
            && self.host().eq_ignore_ascii_case(&other.host())
            && self.port() == other.port()
    }

    /// Whether `self` lies under `prefix`: same scheme, host and port, and
    /// `prefix`'s path is a whole-segment prefix of `self`'s.
    pub fn is_under(&self, prefix: &HttpUrl) -> bool {
        if !self.same_endpoint(prefix) {
            return false;
        }
        let p = prefix.path();
        let s = self.path();
        p.is_empty() || s == p || s.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
    }
}

/// Why an address may not be fetched from (`None`: a public address).
pub fn address_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => v4_class(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return v4_class(v4).map(|_| "an IPv4-mapped non-public");
            }
            v6_class(a)
        }
    }
}

fn v4_class(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a.is_loopback() {
        Some("a loopback")
    } else if a.is_unspecified() || o[0] == 0 {
        Some("an unspecified (\"this network\")")
    } else if a.is_link_local() {
        Some("a link-local")
    } else if a.is_private() {
        Some("a private")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (CGNAT)")
    } else if a.is_multicast() {
        Some("a multicast")
    } else if a.is_broadcast() || o[0] >= 240 {
        Some("a reserved")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("an IETF protocol assignment")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("a benchmarking")
    } else {
        None
    }
}

fn v6_class(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if a.is_loopback() {
        Some("a loopback")
    } else if a.is_unspecified() {
        Some("an unspecified")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("a link-local")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("a site-local")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("a private (unique local)")
    } else if a.is_multicast() {
        Some("a multicast")
    } else if s[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated): `::a.b.c.d`.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        v4_class(v4).map(|_| "an IPv4-compatible non-public")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) reaches IPv4 addresses.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        v4_class(v4).map(|_| "a NAT64 non-public")
    } else if s[0] == 0x2002 {
        // 6to4 embeds an IPv4 address in bits 16..48.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        v4_class(v4).map(|_| "a 6to4 non-public")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("a documentation")
    } else {
        None
    }
}

/// One `[actions] allowed_hosts` entry: `host` (any port) or `host:port`
/// (`[v6]:port` for IPv6 with a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// Lower case; IPv6 addresses without brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl HostEntry {
    pub fn parse(text: &str) -> Result<HostEntry, String> {
        let t = text.trim();
        let bad = || {
            format!(
                "`{text}` is not a host name or `host:port` (write `git.example.org`, \
                 `git.example.org:3000` or `[::1]:3000`, without a scheme or path)"
            )
        };
        if t.is_empty() || t.contains("://") || t.contains('/') || t.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            h.parse::<Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (h.to_owned(), port)
        } else if t.parse::<Ipv6Addr>().is_ok() {
            (t.to_owned(), None)
        } else {
            match t.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (t.to_owned(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
        {
            return Err(bad());
        }
        // Normalise the way URLs are (`127.1` → `127.0.0.1`, case).
        let probe = if host.contains(':') {
            format!("http://[{host}]/")
        } else {
            format!("http://{host}/")
        };
        let host = Url::parse(&probe)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(HostEntry { host, port })
    }

    fn matches(&self, url: &HttpUrl) -> bool {
        self.host.eq_ignore_ascii_case(&url.host_bare())
            && self.port.is_none_or(|p| p == url.port())
    }
}

/// What the policy says about one clone URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Listed in `allowed_hosts`, or the host of the forge that sent the
    /// job (the operator configured it): any address is fine.
    Listed,
    /// The default actions host (the forge sent it): only public addresses.
    PublicOnly,
}

/// Whether `url`'s host may be fetched from at all (before resolving it).
pub fn host_verdict(
    url: &HttpUrl,
    forge_url: Option<&HttpUrl>,
    default_url: Option<&HttpUrl>,
    allowed: &[HostEntry],
) -> Result<Verdict, String> {
    if allowed.iter().any(|e| e.matches(url)) {
        return Ok(Verdict::Listed);
    }
    let same = |u: Option<&HttpUrl>| {
        u.is_some_and(|u| u.host().eq_ignore_ascii_case(&url.host()) && u.port() == url.port())
    };
    if same(forge_url) {
        return Ok(Verdict::Listed);
    }
    if same(default_url) {
        return Ok(Verdict::PublicOnly);
    }
    Err(format!(
        "Refusing to fetch an action from {}: the host `{}` is neither the forge's nor the \
         default actions URL's; list it in `{ALLOWED_HOSTS_KEY}` to allow it",
        url.as_str(),
        host_port(url)
    ))
}

/// Checks the addresses `url`'s host resolved to (for a non-listed host).
pub fn check_addresses(url: &HttpUrl, addrs: &[IpAddr]) -> Result<(), String> {
    for a in addrs {
        if let Some(class) = address_class(*a) {
            return Err(format!(
                "Refusing to fetch an action from {}: `{}` is {class} address ({a}); \
                 list the host in `{ALLOWED_HOSTS_KEY}` to allow it",
                url.as_str(),
                url.host()
            ));
        }
    }
    if addrs.is_empty() {
        return Err(format!(
            "Could not fetch an action from {}: `{}` resolves to no address",
            url.as_str(),
            url.host()
        ));
    }
    Ok(())
}

/// `host:port` as an allowed-hosts entry would say it.
pub fn host_port(url: &HttpUrl) -> String {
    format!("{}:{}", url.host(), url.port())
}

/// The value of git's `http.curloptResolve` that pins `url`'s host to the
/// checked addresses (`host:port:addr[,addr…]`), so that DNS cannot answer
/// differently between the check and the fetch. `None` for an IP literal.
pub fn curl_resolve(url: &HttpUrl, addrs: &[IpAddr]) -> Option<String> {
    if url.ip().is_some() || addrs.is_empty() {
        return None;
    }
    let list: Vec<String> = addrs
        .iter()
        .map(|a| match a {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        })
        .collect();
    Some(format!("{}:{}:{}", url.host(), url.port(), list.join(",")))
}

/// Whether the job token may go with a fetch of `clone`: only to the forge
/// the job came from (same scheme, host, port and path prefix).
pub fn token_allowed(clone: &HttpUrl, forge_url: Option<&HttpUrl>) -> bool {
    forge_url.is_some_and(|f| clone.is_under(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_classes() {
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(address_class(ip(bad)).is_some(), "{bad} must be refused");
        }
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(address_class(ip(good)), None, "{good} is public");
        }
    }

    #[test]
    fn urls_parse_and_normalise() {
        let u = HttpUrl::parse("data.forgejo.org/").unwrap();
        assert_eq!(u.as_str(), "https://data.forgejo.org");
        assert_eq!(u.port(), 443);
        let u = HttpUrl::parse("http://127.1:3000/prefix/").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:3000/prefix");
        assert_eq!(u.ip(), Some(ip("127.0.0.1")));
        let u = HttpUrl::parse("http://2130706433/").unwrap();
        assert_eq!(u.host(), "127.0.0.1");
        let u = HttpUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(u.host(), "[::1]");
        assert_eq!(u.host_bare(), "::1");
        assert!(HttpUrl::parse("file:///etc").is_err());
        assert!(HttpUrl::parse("ssh://git@github.com/x").is_err());
        assert!(HttpUrl::parse("https://user:pw@github.com").is_err());
        assert!(HttpUrl::parse("https://github.com/?x=1").is_err());
        let j = HttpUrl::parse("https://h/p").unwrap().join(&["o", "r"]);
        assert_eq!(j.as_str(), "https://h/p/o/r");
    }

    #[test]
    fn host_entries() {
        assert_eq!(
            HostEntry::parse("Git.Example.org").unwrap(),
            HostEntry {
                host: "git.example.org".into(),
                port: None
            }
        );
        assert_eq!(HostEntry::parse("h:3000").unwrap().port, Some(3000));
        assert_eq!(HostEntry::parse("[::1]:22").unwrap().host, "::1");
        assert_eq!(HostEntry::parse("::1").unwrap().host, "::1");
        for bad in ["", "https://h", "h/x", "h:0", "h:x", "u@h", "[::1", "h h"] {
            assert!(HostEntry::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn verdicts() {
        let forge = HttpUrl::parse("https://forge.example/").unwrap();
        let default = HttpUrl::parse("https://data.forgejo.org").unwrap();
        let allowed = vec![
            HostEntry::parse("127.0.0.1:3000").unwrap(),
            HostEntry::parse("mirror.internal").unwrap(),
        ];
        let v = |u: &str| {
            host_verdict(
                &HttpUrl::parse(u).unwrap(),
                Some(&forge),
                Some(&default),
                &allowed,
            )
        };
        assert_eq!(v("https://forge.example/a/b").unwrap(), Verdict::Listed);
        assert_eq!(
            v("https://data.forgejo.org/a/b").unwrap(),
            Verdict::PublicOnly
        );
        assert_eq!(v("http://127.0.0.1:3000/a/b").unwrap(), Verdict::Listed);
        assert_eq!(v("http://mirror.internal:81/a/b").unwrap(), Verdict::Listed);
        let e = v("http://127.0.0.1:3001/a/b").unwrap_err();
        assert!(
            e.contains(ALLOWED_HOSTS_KEY) && e.contains("127.0.0.1:3001"),
            "{e}"
        );
        assert!(v("https://forge.example:8443/a/b").is_err(), "other port");
        assert!(v("https://169.254.169.254/a/b").is_err());
    }

    #[test]
    fn address_check_names_url_and_key() {
        let u = HttpUrl::parse("https://evil.example/a/b").unwrap();
        let e = check_addresses(&u, &[ip("1.1.1.1"), ip("10.0.0.1")]).unwrap_err();
        assert!(e.contains("https://evil.example/a/b"), "{e}");
        assert!(
            e.contains("private") && e.contains(ALLOWED_HOSTS_KEY),
            "{e}"
        );
        assert!(check_addresses(&u, &[ip("1.1.1.1")]).is_ok());
        assert!(check_addresses(&u, &[]).is_err());
    }

    #[test]
    fn pins() {
        let u = HttpUrl::parse("https://h.example/a").unwrap();
        assert_eq!(
            curl_resolve(&u, &[ip("1.2.3.4"), ip("2606:4700::1")]).as_deref(),
            Some("h.example:443:1.2.3.4,[2606:4700::1]")
        );
        let lit = HttpUrl::parse("http://1.2.3.4/a").unwrap();
        assert_eq!(curl_resolve(&lit, &[ip("1.2.3.4")]), None);
    }

    #[test]
    fn token_only_to_the_forge() {
        let forge = HttpUrl::parse("https://forge.example/git/").unwrap();
        let ok = |u: &str| token_allowed(&HttpUrl::parse(u).unwrap(), Some(&forge));
        assert!(ok("https://forge.example/git/o/r"));
        assert!(!ok("https://forge.example/gitx/o/r"));
        assert!(!ok("https://forge.example/o/r"));
        assert!(!ok("http://forge.example/git/o/r"));
        assert!(!ok("https://forge.example:444/git/o/r"));
        assert!(!ok("https://forge.example.evil/git/o/r"));
        assert!(!token_allowed(
            &HttpUrl::parse("https://forge.example/git/o/r").unwrap(),
            None
        ));
    }
}
