//! Certificates: the gateway's application certificate and the trust list for server
//! certificates, under `<data_dir>/opcua/pki` in the layout OPC UA tools use:
//! `own/cert.der` and `private/private.pem` (created on first start), `trusted/` (server
//! certificates the gateway accepts) and `rejected/` (unknown ones it refused, kept so an
//! operator can trust them with `fieldgate opcua trust` or by moving the file).

use std::path::{Path, PathBuf};

/// The gateway's OPC UA certificate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The directory under the gateway's data directory.
    pub fn under(data_dir: &Path) -> Pki {
        Pki {
            dir: data_dir.join("opcua").join("pki"),
        }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Server certificates the gateway accepts.
    pub fn trusted(&self) -> PathBuf {
        self.dir.join("trusted")
    }

    /// Server certificates the gateway refused.
    pub fn rejected(&self) -> PathBuf {
        self.dir.join("rejected")
    }

    /// The gateway's own certificate.
    pub fn own_certificate(&self) -> PathBuf {
        self.dir.join("own").join("cert.der")
    }

    /// Certificates in `rejected/`, oldest first.
    pub fn rejected_files(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.rejected()) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, e.path())
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }

    /// What to tell an operator when a server's certificate was refused.
    pub fn untrusted_hint(&self, server: &str) -> String {
        let files = self.rejected_files();
        let newest = files
            .last()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| self.rejected().display().to_string());
        format!(
            "the certificate of OPC UA server `{server}` is not trusted; it was put in {newest}. \
             If it is the server's, trust it with `fieldgate opcua trust --config <file> '{}'` \
             or move the file into {}",
            files
                .last()
                .and_then(|p| p.file_name())
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "<file>".into()),
            self.trusted().display()
        )
    }

    /// Moves a rejected certificate (a file name in `rejected/`, or a path to any
    /// certificate file) into `trusted/`; returns where it went.
    pub fn trust(&self, cert: &Path) -> std::io::Result<PathBuf> {
        let src = if cert.components().count() == 1 && !cert.exists() {
            self.rejected().join(cert)
        } else {
            cert.to_path_buf()
        };
        let name = src.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
        })?;
        if !src.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is not a file (rejected certificates are in {})",
                    src.display(),
                    self.rejected().display()
                ),
            ));
        }
        std::fs::create_dir_all(self.trusted())?;
        let dst = self.trusted().join(name);
        if src.starts_with(self.rejected()) {
            std::fs::rename(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
        Ok(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_certificate_is_trusted_by_name_and_the_hint_names_it() {
        let d = tempfile::tempdir().unwrap();
        let pki = Pki::under(d.path());
        std::fs::create_dir_all(pki.rejected()).unwrap();
        std::fs::write(pki.rejected().join("srv [ab12].der"), b"cert").unwrap();
        let hint = pki.untrusted_hint("plc");
        assert!(
            hint.contains("srv [ab12].der") && hint.contains("fieldgate opcua trust"),
            "{hint}"
        );
        let to = pki.trust(Path::new("srv [ab12].der")).unwrap();
        assert_eq!(to, pki.trusted().join("srv [ab12].der"));
        assert!(to.exists() && pki.rejected_files().is_empty());
        assert!(pki.trust(Path::new("nothing.der")).is_err());
    }
}
