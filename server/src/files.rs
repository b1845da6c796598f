//! Static content: the embedded chat UI, the browser demo directory and the embedded default
//! model's files.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
#[cfg(feature = "default-model")]
use qwgpu_engine::default_model as dm;

use crate::error::ApiError;

pub const INDEX_HTML: &str = include_str!("../ui/index.html");
pub const APP_JS: &str = include_str!("../ui/app.js");
pub const STYLE_CSS: &str = include_str!("../ui/style.css");

/// The UI only talks to this server: no inline scripts, no third-party anything.
const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_type(body: impl Into<Body>, content_type: &str) -> Response {
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn ui(file: &str) -> Response {
    let (body, ty) = match file {
        "index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return ApiError::not_found(&format!("/ui/{file}")).into_response(),
    };
    let mut r = with_type(body, ty);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(UI_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The files of the embedded default model, for the browser demo.
#[cfg(not(feature = "default-model"))]
pub fn default_model_file(name: &str) -> Response {
    ApiError::not_found(&format!(
        "/models/default/{name} (this server was built without the embedded model)"
    ))
    .into_response()
}

/// The files of the embedded default model, for the browser demo.
#[cfg(feature = "default-model")]
pub fn default_model_file(name: &str) -> Response {
    let (body, ty): (&'static [u8], &str) = match name {
        "config.json" => (dm::CONFIG.as_bytes(), "application/json"),
        "generation_config.json" => (dm::GENERATION_CONFIG.as_bytes(), "application/json"),
        "tokenizer_config.json" => (dm::TOKENIZER_CONFIG.as_bytes(), "application/json"),
        "tokenizer.json" => (dm::TOKENIZER, "application/json"),
        "model.safetensors" => (dm::WEIGHTS, "application/octet-stream"),
        _ => return ApiError::not_found(&format!("/models/default/{name}")).into_response(),
    };
    let mut r = with_type(Body::from(axum::body::Bytes::from_static(body)), ty);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

fn mime(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html") | Some("htm") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") | Some("map") => "application/json",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("ico") => "image/x-icon",
        Some("txt") | Some("md") => "text/plain; charset=utf-8",
        Some("wgsl") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A file under `root`; `rel` comes from the URL (already percent-decoded). Only plain path
/// components are allowed; a directory serves its index.html.
pub async fn demo_file(root: Option<&Path>, rel: &str) -> Response {
    let shown = format!("/demo/{rel}");
    let Some(root) = root else {
        return ApiError::not_found(&shown).into_response();
    };
    let mut path = PathBuf::from(root);
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => path.push(p),
            Component::CurDir => {}
            _ => return ApiError::not_found(&shown).into_response(),
        }
    }
    if rel.contains('\\') || rel.contains('\0') {
        return ApiError::not_found(&shown).into_response();
    }
    if tokio::fs::metadata(&path)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        path.push("index.html");
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut r = with_type(bytes, mime(&path));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Err(_) => ApiError::not_found(&shown).into_response(),
    }
}

pub fn redirect(to: &'static str) -> Response {
    let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}
