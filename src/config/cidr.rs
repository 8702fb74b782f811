//! Address ranges (`"10.0.0.0/8"`, `"fd00::/8"`) for the guest network keys
//! `images.<name>.network_deny` and `network_allow`.

use std::net::IpAddr;

/// An IPv4 or IPv6 address range: an address and a prefix length. The
/// address is stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range `addr/prefix` (host bits cleared); `None` if `prefix` is
    /// longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let bits = Self::bits_of(addr);
        if u32::from(prefix) > bits {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        Some(Cidr { addr, prefix })
    }

    /// One address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = Self::bits_of(addr) as u8;
        Cidr { addr, prefix }
    }

    fn bits_of(addr: IpAddr) -> u32 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// Parses `ADDR/LEN` (a bare address means one host). The error says
    /// what is wrong, for the config's message.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (a, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("\"{a}\" is not an IPv4 or IPv6 address"))?;
        let Some(len) = len else {
            return Ok(Cidr::host(addr));
        };
        let bits = Self::bits_of(addr);
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| u32::from(*p) <= bits)
            .ok_or_else(|| format!("\"{len}\" is not a prefix length from 0 to {bits}"))?;
        let c = Cidr::new(addr, prefix).ok_or_else(|| format!("bad prefix /{prefix}"))?;
        if c.addr != addr {
            return Err(format!(
                "{addr}/{prefix} has host bits set: the range starts at {}/{prefix}",
                c.addr
            ));
        }
        Ok(c)
    }

    /// The first address of the range.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` lies in the range (never across IPv4 and IPv6).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// True if every address of `other` lies in this range.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// True if the two ranges share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.9.8.7".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(Cidr::parse("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix(), 0);
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            Cidr::parse("10.0.0.0/8")
                .unwrap()
                .covers(&Cidr::parse("10.1.0.0/16").unwrap())
        );
        assert!(
            !Cidr::parse("10.1.0.0/16")
                .unwrap()
                .covers(&Cidr::parse("10.0.0.0/8").unwrap())
        );
        assert!(
            Cidr::parse("10.1.0.0/16")
                .unwrap()
                .overlaps(&Cidr::parse("10.0.0.0/8").unwrap())
        );
    }

    #[test]
    fn says_what_is_wrong() {
        assert!(
            Cidr::parse("10.0.0/8")
                .unwrap_err()
                .contains("not an IPv4 or IPv6")
        );
        assert!(
            Cidr::parse("10.0.0.0/33")
                .unwrap_err()
                .contains("from 0 to 32")
        );
        assert!(
            Cidr::parse("fd00::/129")
                .unwrap_err()
                .contains("from 0 to 128")
        );
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(Cidr::parse("10.0.0.0/x").is_err());
    }
}
