//! The device's MAC address, kept as the device spelled it.

use core::fmt;
use core::str::FromStr;

use tokenizer_auth_engine::Mac;

use crate::Error;

/// A device's MAC address: checked, and kept in the spelling it was given
/// (the token file stores it so, as the Python package and older clients
/// do); requests carry its normalized form, which is what the server
/// compares.
///
/// Accepted spellings: six hex pairs separated by `:` or `-` (one
/// separator throughout), in either case, or twelve bare hex digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceMac {
    text: String,
    mac: Mac,
}

impl DeviceMac {
    /// Checks `text` as a MAC address.
    pub fn parse(text: &str) -> Result<DeviceMac, Error> {
        let mac = Mac::parse(text).ok_or(Error::Field {
            field: "MAC",
            reason: "is not a MAC address: six hex pairs separated by : or -, or twelve hex digits",
        })?;
        Ok(DeviceMac { text: text.to_owned(), mac })
    }

    /// The spelling it was given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The address, normalized.
    pub fn mac(&self) -> Mac {
        self.mac
    }
}

impl FromStr for DeviceMac {
    type Err = Error;

    fn from_str(text: &str) -> Result<DeviceMac, Error> {
        DeviceMac::parse(text)
    }
}

impl fmt::Display for DeviceMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for DeviceMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceMac({:?})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_are_kept_and_normalized_for_the_wire() {
        for text in ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "aabbccddeeff", "Aa:bB:cc:dd:ee:ff"] {
            let mac = DeviceMac::parse(text).unwrap();
            assert_eq!(mac.as_str(), text);
            assert_eq!(mac.mac().to_string(), "aa:bb:cc:dd:ee:ff");
        }
        for bad in
            ["aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:ff", "aa:bb:cc:dd:ee:fg", "aabbccddeeff0", "", "aa:bb:cc:dd:ee:ff\n"]
        {
            assert!(matches!(DeviceMac::parse(bad), Err(Error::Field { field: "MAC", .. })), "{bad:?}");
        }
    }
}
