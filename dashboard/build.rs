//! Finds the dashboard's built front end for `rust-embed` (the `ZF_DASHBOARD_SITE` folder):
//!
//! 1. `dist/`, as `npm run build` made it, when it is newer than every source;
//! 2. else, when npm is on PATH (and `ZEROFLOW_DASHBOARD_NPM` is not `0`), a build into `OUT_DIR`
//!    (`npm ci` first if `node_modules` is missing): a fresh clone builds with `cargo build`;
//! 3. else a one-page placeholder that says how to build the dashboard, and a cargo warning.
//!
//! It never writes into the source folder besides `node_modules` (so a build does not make
//! itself stale), and a failed npm build falls back to the placeholder instead of failing the
//! Rust build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

const SOURCES: &[&str] = &[
    "ui",
    "index.html",
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "vite.config.ts",
];

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() {
        return own;
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .chain(own)
        .max()
}

fn npm(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run npm {}: {e}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = err.lines().rev().take(5).collect();
    Err(format!(
        "npm {} failed ({}): {}",
        args.join(" "),
        out.status,
        last.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

fn build_with_npm(dir: &Path, out: &Path) -> Result<PathBuf, String> {
    if std::env::var("ZEROFLOW_DASHBOARD_NPM").is_ok_and(|v| v == "0") {
        return Err("ZEROFLOW_DASHBOARD_NPM=0".into());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        return Err("npm is not on PATH".into());
    }
    // Two builds at once (two profiles) must not both run `npm ci` in one folder.
    let lock = std::fs::File::create(out.join("npm.lock")).map_err(|e| e.to_string())?;
    let _ = lock.lock();
    if !dir.join("node_modules").is_dir() {
        npm(dir, &["ci", "--no-audit", "--no-fund"])?;
    }
    let site = out.join("site");
    let site_arg = site.display().to_string();
    npm(
        dir,
        &[
            "exec",
            "--",
            "vite",
            "build",
            "--outDir",
            &site_arg,
            "--emptyOutDir",
            "--logLevel",
            "warn",
        ],
    )?;
    Ok(site)
}

fn placeholder(out: &Path, why: &str) -> PathBuf {
    let site = out.join("placeholder");
    let _ = std::fs::create_dir_all(&site);
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>Zeroflow dashboard not built</title>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em\">\
         <h1>The dashboard was not built into this jc</h1>\
         <p>Its front end is built with npm ({why}). To get it:</p>\
         <pre>cd dashboard &amp;&amp; npm ci &amp;&amp; npm run build\ncargo build -p zeroflow-cli</pre>\
         <p>The REST API on this port works as usual.</p></body>"
    );
    let _ = std::fs::write(site.join("index.html"), page);
    site
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for s in SOURCES.iter().chain(&["dist"]) {
        println!("cargo:rerun-if-changed={s}");
    }
    println!("cargo:rerun-if-env-changed=ZEROFLOW_DASHBOARD_NPM");
    let dist = dir.join("dist");
    let sources = SOURCES.iter().filter_map(|s| newest(&dir.join(s))).max();
    let built = std::fs::metadata(dist.join("index.html"))
        .and_then(|m| m.modified())
        .ok();
    let site = match (built, sources) {
        (Some(b), Some(s)) if b >= s => dist,
        (Some(_), None) => dist,
        _ => match build_with_npm(&dir, &out) {
            Ok(site) => site,
            Err(why) => {
                println!(
                    "cargo:warning=the dashboard's front end is not built ({why}); jc serves a page saying how to build it: cd dashboard && npm ci && npm run build"
                );
                placeholder(&out, &why)
            }
        },
    };
    println!("cargo:rustc-env=ZF_DASHBOARD_SITE={}", site.display());
}
