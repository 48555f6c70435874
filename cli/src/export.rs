//! `jc flow export --target knative`: renders a Flow for a Knative cluster (the rendering is
//! `zeroflow_platform::knative`; this parses arguments and writes the result).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use zeroflow_platform::knative::{self, KnativeOptions};

const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_CANTCREAT: i32 = 73;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Target {
    /// Knative Services (serving.knative.dev/v1), plus the Namespace, the ConfigMap with the
    /// Flow, and a PersistentVolumeClaim per Executor with efs or ebs storage.
    Knative,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The Flow YAML file.
    pub path: PathBuf,
    /// What to render for.
    #[arg(long, value_enum, default_value = "knative")]
    pub target: Target,
    /// Namespace of every object (default: the Flow's `jcloud.name`, else the file's name).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The image holding an Executor's code (repeatable). Needed for Executors whose code is
    /// yours (`uses:` a class or a config file, `command:`) or on Executor Hub; overrides
    /// `docker://`.
    #[arg(long = "image", value_name = "EXECUTOR=IMAGE")]
    pub images: Vec<String>,
    /// The image with `jc` and `zeroflow-shim` in /usr/local/bin (build it from
    /// manifests/Containerfile).
    #[arg(long, default_value = concat!("zeroflow/zeroflow:", env!("CARGO_PKG_VERSION")))]
    pub zeroflow_image: String,
    /// The image for Python Executors without code of their own (pass-through, inline configs).
    #[arg(long, default_value = "jinaai/jina:3.34.0-py311-standard")]
    pub jina_image: String,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// A JSON array of the objects instead of YAML documents.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExportArgs) -> i32 {
    let Target::Knative = args.target;
    let mut images = BTreeMap::new();
    for pair in &args.images {
        match pair.split_once('=') {
            Some((name, image)) if !name.is_empty() && !image.is_empty() => {
                images.insert(name.to_string(), image.to_string());
            }
            _ => {
                eprintln!("error: --image {pair:?}: expected EXECUTOR=IMAGE");
                return EX_USAGE;
            }
        }
    }
    let (flow, text) = match crate::serve::load_with_text(&args.path) {
        Ok(f) => f,
        Err(code) => return code,
    };
    for name in images.keys() {
        if !flow.executors.iter().any(|e| &e.name == name) {
            let known: Vec<&str> = flow.executors.iter().map(|e| e.name.as_str()).collect();
            eprintln!(
                "error: --image {name}=...: the Flow has no Executor {name:?} (it has: {})",
                known.join(", ")
            );
            return EX_USAGE;
        }
    }
    let default_name = args
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flow".into());
    let opts = KnativeOptions {
        namespace: args.namespace,
        default_name,
        zeroflow_image: args.zeroflow_image,
        jina_image: args.jina_image,
        images,
    };
    let export = match knative::render(&flow, &text, &opts) {
        Ok(e) => e,
        Err(e) => {
            for why in &e.0 {
                eprintln!("error: {why}");
            }
            return EX_DATAERR;
        }
    };
    for w in &export.warnings {
        eprintln!("note: {w}");
    }
    let out = if args.json {
        serde_json::to_string_pretty(&export.objects).unwrap_or_default() + "\n"
    } else {
        knative::to_yaml(&export)
    };
    let written = match &args.output {
        Some(path) => std::fs::write(path, &out),
        None => std::io::stdout().lock().write_all(out.as_bytes()),
    };
    if let Err(e) = written {
        let to = args
            .output
            .as_ref()
            .map_or("standard output".into(), |p| p.display().to_string());
        eprintln!("error: cannot write {to}: {e}");
        return EX_CANTCREAT;
    }
    if let Some(path) = &args.output {
        let services = export
            .objects
            .iter()
            .filter(|o| o["kind"] == "Service")
            .count();
        eprintln!(
            "Wrote {} object(s), {services} Knative Service(s), to {}. Apply with: kubectl apply -f {}",
            export.objects.len(),
            path.display(),
            path.display()
        );
    }
    0
}
