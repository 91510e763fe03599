//! Names that become paths in the blob store, and the checks that keep them
//! inside it.
//!
//! - Blob ids are `blobs/<sha256 hex>` (64 lowercase hex digits).
//! - Job ids are `job-` followed by decimal digits (`job-000042`).
//! - Artifact names (and upload names) are one or more `/`-separated
//!   segments of `[A-Za-z0-9._-]`, none empty and none starting with `.`
//!   (so no `.` or `..`), at most [`MAX_NAME_LEN`] bytes: nothing absolute,
//!   nothing that climbs out of `jobs/<job id>/`.
//!
//! Every check returns [`Error::InvalidName`] (INVALID_ARGUMENT) saying why.

use crate::{Error, Result};

/// The longest artifact or upload name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The prefix of every blob id.
pub const BLOB_PREFIX: &str = "blobs/";

/// The blob id of content whose SHA-256 is `hex`.
pub fn blob_id(hex: &str) -> String {
    format!("{BLOB_PREFIX}{hex}")
}

/// The job id of the job with database sequence number `seq`.
pub fn job_id(seq: i64) -> String {
    format!("job-{seq:06}")
}

/// The store path of artifact `name` of job `job_id` (both checked).
pub fn artifact_path(job_id: &str, name: &str) -> Result<String> {
    check_job_id(job_id)?;
    check_name("artifact name", name)?;
    Ok(format!("jobs/{job_id}/{name}"))
}

/// Checks a blob id: `blobs/` and 64 lowercase hex digits.
pub fn check_blob_id(id: &str) -> Result<()> {
    let bad = |reason| Error::InvalidName {
        what: "blob id",
        name: id.to_owned(),
        reason,
    };
    let hex = id
        .strip_prefix(BLOB_PREFIX)
        .ok_or_else(|| bad("must be 'blobs/<sha256 hex>'"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad("must be 'blobs/' and 64 lowercase hex digits"));
    }
    Ok(())
}

/// Checks a job id: `job-` and decimal digits.
pub fn check_job_id(id: &str) -> Result<()> {
    let digits = id.strip_prefix("job-").unwrap_or("");
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidName {
            what: "job id",
            name: id.to_owned(),
            reason: "must be 'job-' followed by digits",
        });
    }
    Ok(())
}

/// Checks an artifact or upload name (`what` says which, for the message).
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| Error::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("is longer than 255 bytes"));
    }
    if name.starts_with('/') {
        return Err(bad("must be relative"));
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(bad("has an empty path segment"));
        }
        if segment.starts_with('.') {
            return Err(bad("has a path segment starting with '.'"));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if !segment.bytes().all(allowed) {
            return Err(bad("may only hold letters, digits, '.', '_', '-' and '/'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_store_are_rejected() {
        for name in [
            "",
            "..",
            "../x",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            ".hidden",
            "a\\b",
            "a b",
            "x\0",
            "é",
        ] {
            assert!(check_name("artifact name", name).is_err(), "{name:?}");
        }
        for name in ["weights.safetensors", "ckpt/step-10.safetensors", "a_b-c.1"] {
            check_name("artifact name", name).unwrap();
        }
        assert!(check_name("artifact name", &"a".repeat(256)).is_err());
    }

    #[test]
    fn blob_and_job_ids_have_one_form() {
        let hex = "ab".repeat(32);
        check_blob_id(&blob_id(&hex)).unwrap();
        assert!(check_blob_id(&format!("blobs/{}", "AB".repeat(32))).is_err());
        assert!(check_blob_id(&format!("blobs/../{}", &hex[3..])).is_err());
        assert!(check_blob_id(&hex).is_err());
        check_job_id(&job_id(7)).unwrap();
        assert_eq!(job_id(7), "job-000007");
        assert!(check_job_id("job-").is_err());
        assert!(check_job_id("job-1/../2").is_err());
        assert_eq!(
            artifact_path("job-000001", "w.safetensors").unwrap(),
            "jobs/job-000001/w.safetensors"
        );
        assert!(artifact_path("job-000001", "../x").is_err());
    }
}
