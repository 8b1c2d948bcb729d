//! Reading access profiles' secrets on the server: from a file (at most 64 KiB) or from an
//! environment variable of the server process, each time an environment is opened or a
//! command runs under a grant, so a rotated value is used at once.

use std::io::Read;

use airlock_core::access::{SecretSource, SecretValue};
use airlock_core::ports::Secrets;

/// The largest secret read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

#[derive(Debug, Default, Clone, Copy)]
pub struct HostSecrets;

impl Secrets for HostSecrets {
    fn read(&self, source: &SecretSource) -> Result<SecretValue, String> {
        match source {
            SecretSource::File(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                let mut bytes = Vec::new();
                file.take(MAX_SECRET_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                if bytes.len() as u64 > MAX_SECRET_BYTES {
                    return Err(format!("{} is larger than 64 KiB", path.display()));
                }
                Ok(SecretValue::new(bytes))
            }
            SecretSource::Env(name) => std::env::var_os(name)
                .map(|value| SecretValue::new(value.into_encoded_bytes()))
                .ok_or_else(|| format!("the server has no variable {name}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_and_refuses_missing_or_huge_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret").unwrap();
        let value = HostSecrets.read(&SecretSource::File(path.clone())).unwrap();
        assert_eq!(value.expose(), b"s3cret");
        assert!(!format!("{value:?}").contains("s3cret"));
        std::fs::write(&path, vec![b'x'; 65 * 1024]).unwrap();
        assert!(HostSecrets.read(&SecretSource::File(path)).is_err());
        assert!(
            HostSecrets
                .read(&SecretSource::File(dir.path().join("missing")))
                .is_err()
        );
        assert!(
            HostSecrets
                .read(&SecretSource::Env("AIRLOCK_TEST_NO_SUCH_VARIABLE".into()))
                .is_err()
        );
    }
}
