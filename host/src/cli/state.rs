//! `troupe kv`: steps' buckets, from the app's directory, through the
//! broker's `Buckets` facet (the embedded store's files, whether or not a
//! host runs; writes apply at once in a transaction of their own).

use anyhow::{Context, Result, bail};
use troupe::broker::open_app_events;

use super::{KvCmd, load_app};

pub(crate) fn kv(cmd: KvCmd, json: bool) -> Result<()> {
    let (KvCmd::List { app, .. }
    | KvCmd::Get { app, .. }
    | KvCmd::Put { app, .. }
    | KvCmd::Delete { app, .. }) = &cmd;
    let app = load_app(app)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let b = rt
        .block_on(open_app_events(&app.broker, &app.name, &app.state_dir()))
        .with_context(|| format!("cannot open the broker {}", app.broker))?;
    match cmd {
        KvCmd::List { bucket, .. } => {
            let keys = rt.block_on(b.bucket_keys(&bucket))?;
            if json {
                println!("{}", serde_json::json!({ "bucket": bucket, "keys": keys }));
            } else {
                for k in keys {
                    println!("{}", troupe::text::escape(&k));
                }
            }
        }
        KvCmd::Get { bucket, key, .. } => {
            let Some((value, version)) = rt.block_on(b.bucket_entry(&bucket, &key))? else {
                bail!("bucket {bucket:?} has no key {key:?}");
            };
            if json {
                let v = troupe::api::kv::entry_json(&bucket, &key, value, version);
                println!("{v}");
            } else {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                if std::io::IsTerminal::is_terminal(&out) && !value.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
            }
        }
        KvCmd::Put {
            bucket, key, value, ..
        } => {
            rt.block_on(b.bucket_write(&bucket, &key, Some(value.into_bytes())))?;
            report(json, "set", &bucket, &key);
        }
        KvCmd::Delete { bucket, key, .. } => {
            rt.block_on(b.bucket_write(&bucket, &key, None))?;
            report(json, "deleted", &bucket, &key);
        }
    }
    Ok(())
}

fn report(json: bool, what: &str, bucket: &str, key: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({ what: { "bucket": bucket, "key": key } })
        );
    } else {
        println!("{what} {bucket} {}", troupe::text::escape(key));
    }
}
