//! `GET /v1/kv/{bucket}` and `GET /v1/kv/{bucket}/{key}`: steps' buckets,
//! read-only, for operators (`troupe kv` writes). A key with `/` in it is
//! sent percent-encoded (`sku%2Ftea`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Value, json};

use super::{ApiError, ApiState};

/// A bucket's keys, sorted (none for a bucket never written).
#[utoipa::path(get, path = "/v1/kv/{bucket}",
    params(("bucket" = String, Path, description = "The bucket's name")),
    responses((status = 200, description = "The bucket's keys"), (status = 400, description = "Not a bucket name")))]
pub(super) async fn bucket(
    State(s): State<ApiState>,
    Path(bucket): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = s.broker.bucket_keys(&bucket).await?;
    Ok(Json(json!({ "bucket": bucket, "keys": keys })))
}

/// One entry: its value (`value` when it is UTF-8 text, else
/// `value_base64`) and version.
#[utoipa::path(get, path = "/v1/kv/{bucket}/{key}",
    params(("bucket" = String, Path, description = "The bucket's name"),
           ("key" = String, Path, description = "The key, percent-encoded")),
    responses((status = 200, description = "The entry"), (status = 400, description = "Not a bucket name or a key"),
              (status = 404, description = "No such key")))]
pub(super) async fn entry(
    State(s): State<ApiState>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let Some((value, version)) = s.broker.bucket_entry(&bucket, &key).await? else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("bucket {bucket:?} has no key {key:?}"),
        ));
    };
    Ok(Json(entry_json(&bucket, &key, value, version)))
}

/// An entry as the API and `troupe --json kv get` show it.
pub fn entry_json(bucket: &str, key: &str, value: Vec<u8>, version: u64) -> Value {
    let mut v = json!({ "bucket": bucket, "key": key, "version": version });
    match String::from_utf8(value) {
        Ok(text) => v["value"] = json!(text),
        Err(e) => {
            v["value_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))
        }
    }
    v
}
