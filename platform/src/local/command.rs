//! What one replica runs: the Executor's command line (its own `command`, or `jina executor`
//! with its `uses_*`), its workspace, and whether its program is there at all. Building the
//! command is pure (the file system is asked only through the `exists` argument, and files the
//! command needs are returned, not written), so it is tested as tables. It must not start
//! processes: `process` does.

use super::{LocalOptions, RuntimeError};
use std::path::{Path, PathBuf};
use zeroflow_spec::{Executor, Uses};

/// One replica's command line (before the shim wraps it; `{port}` is the Executor's port,
/// filled in by the shim), and the files it reads that must be written first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCommand {
    pub argv: Vec<String>,
    /// `(path, contents)`: an inline `uses:` mapping, which `jina --uses` takes as a path.
    pub files: Vec<(PathBuf, String)>,
}

impl ReplicaCommand {
    /// Writes [`ReplicaCommand::files`] (their folders too).
    pub fn write_files(&self) -> std::io::Result<()> {
        for (path, text) in &self.files {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, text)?;
        }
        Ok(())
    }
}

/// The command that runs one replica of shard `shard` of `exec`.
pub fn executor_command(
    exec: &Executor,
    shard: u32,
    opts: &LocalOptions,
) -> Result<ReplicaCommand, RuntimeError> {
    build(exec, shard, opts, &|p| p.exists())
}

/// [`executor_command`], asking `exists` whether a file is there.
fn build(
    exec: &Executor,
    shard: u32,
    opts: &LocalOptions,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<ReplicaCommand, RuntimeError> {
    let argv = |argv| ReplicaCommand {
        argv,
        files: vec![],
    };
    if let Some(cmd) = &exec.command {
        let mut cmd = cmd.clone();
        if let Some(first) = cmd.first_mut()
            && !first.contains('/')
            && let Some(dir) = &opts.bin_dir
            && exists(&dir.join(&*first))
        {
            *first = dir.join(&*first).to_string_lossy().into_owned();
        }
        return Ok(argv(cmd));
    }
    let jina = opts.jina.to_string_lossy();
    let exec = &Executor {
        workspace: workspace(exec, opts),
        ..exec.clone()
    };
    let jina_args =
        |uses: String| jina_executor_args(exec, &jina, uses, shard, |p| resolve(&opts.flow_dir, p));
    match &exec.uses {
        Uses::PassThrough => Ok(argv(jina_args("BaseExecutor".into()))),
        Uses::Class { name } => Ok(argv(jina_args(name.clone()))),
        Uses::Config { path } => Ok(argv(jina_args(resolve(&opts.flow_dir, path)))),
        Uses::Inline { config } => {
            // jina's --uses takes a path; the inline mapping is written out as YAML-compatible
            // JSON next to the other generated files.
            let file = opts.work_dir.join(format!("{}.uses.yml", exec.name));
            Ok(ReplicaCommand {
                argv: jina_args(file.to_string_lossy().into_owned()),
                files: vec![(file, config.to_string())],
            })
        }
        other => Err(RuntimeError::Unsupported {
            executor: exec.name.clone(),
            uses: describe(other),
            why: "it names a container image, and this machine runs Executors as local processes; \
                  give the Executor's config.yml or class with py_modules instead"
                .into(),
        }),
    }
}

pub(super) fn describe(uses: &Uses) -> String {
    match uses {
        Uses::PassThrough => "no `uses` (pass-through)".into(),
        Uses::Class { name } => name.clone(),
        Uses::Config { path } => path.clone(),
        Uses::Inline { .. } => "an inline config".into(),
        Uses::Docker { image } => format!("docker://{image}"),
        Uses::Hub { scheme, reference } => format!("{scheme}://{reference}"),
    }
}

/// `jina executor` with the Executor's `uses_*` and `py_modules` (each path through `path`),
/// on `{port}` of loopback: the shim in front of it is what others call.
pub fn jina_executor_args(
    exec: &Executor,
    jina: &str,
    uses: String,
    shard: u32,
    path: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut v = vec![
        jina.to_string(),
        "executor".into(),
        "--uses".into(),
        uses,
        "--name".into(),
        exec.name.clone(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        "{port}".into(),
        // One process: SIGTERM reaches the server itself (see jina-protocol.md).
        "--native".into(),
    ];
    for (flag, map) in [
        ("--uses-with", &exec.uses_with),
        ("--uses-metas", &exec.uses_metas),
        ("--uses-requests", &exec.uses_requests),
    ] {
        if !map.is_empty() {
            v.push(flag.into());
            v.push(serde_json::Value::Object(map.clone()).to_string());
        }
    }
    if !exec.py_modules.is_empty() {
        v.push("--py-modules".into());
        for m in &exec.py_modules {
            v.push(path(m));
        }
    }
    if let Some(w) = &exec.workspace {
        v.push("--workspace".into());
        v.push(path(w));
    }
    if exec.shards > 1 {
        // What a Jina Flow tells each shard: its `runtime_args.shard_id` names its workspace
        // (`workspace/NAME/ID`), so the shards of a stateful Executor keep apart what they hold.
        v.extend([
            "--shards".into(),
            exec.shards.to_string(),
            "--shard-id".into(),
            shard.to_string(),
        ]);
    }
    v
}

/// Fails at once, naming what to install or fix, when the program a replica would run is not
/// there: otherwise every replica start fails the same way and the Flow only gives up after
/// several attempts, with the reason buried in the last one's output.
pub fn check_program(
    exec: &Executor,
    cmd: &[String],
    opts: &LocalOptions,
) -> Result<(), RuntimeError> {
    let Some(program) = cmd.first() else {
        return Ok(());
    };
    let hint = if exec.command.is_none() {
        "Python Executors run with Jina's own `jina executor`: install jina (see the README's \
         setup), or set ZEROFLOW_JINA to its path"
    } else {
        "`command:` must name a program on PATH, or a path (relative to the Flow's folder)"
    };
    let fail = |why: &str| {
        Err(RuntimeError::NotFound {
            executor: exec.name.clone(),
            program: program.clone(),
            why: why.into(),
            hint: hint.into(),
        })
    };
    if program.contains('/') {
        let path = opts.flow_dir.join(program);
        return if executable(&path) {
            Ok(())
        } else if path.exists() {
            fail("is not an executable file")
        } else {
            fail("does not exist")
        };
    }
    match locate(program, Some(exec), opts) {
        Some(_) => Ok(()),
        None => fail("is not on PATH"),
    }
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` as a replica of `exec` would find it: a path (from the Flow's folder), else the
/// first executable of that name on the replica's PATH (the Executor's `env`, else the Flow's,
/// else this process's).
pub fn locate(program: &str, exec: Option<&Executor>, opts: &LocalOptions) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(opts.flow_dir.join(program)).filter(|p| executable(p));
    }
    let path_var = exec
        .and_then(|e| e.env.get("PATH").cloned())
        .or_else(|| opts.env.get("PATH").cloned())
        .or_else(|| std::env::var("PATH").ok())?;
    std::env::split_paths(&path_var)
        .map(|dir| opts.flow_dir.join(dir).join(program))
        .find(|p| executable(p))
}

/// The absolute workspace of `exec`'s replicas, if it has one (see [`LocalOptions::workspace`]).
pub fn workspace(exec: &Executor, opts: &LocalOptions) -> Option<String> {
    match (&exec.workspace, &opts.workspace) {
        (Some(w), Some(root)) if Path::new(w).is_relative() => {
            Some(root.join(w).to_string_lossy().into_owned())
        }
        (Some(w), _) => Some(resolve(&opts.flow_dir, w)),
        (None, Some(root)) => Some(root.to_string_lossy().into_owned()),
        (None, None) => None,
    }
}

fn resolve(dir: &Path, p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() {
        p.to_string()
    } else {
        dir.join(path).to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(yaml: &str) -> zeroflow_spec::Flow {
        zeroflow_spec::load(yaml, &zeroflow_spec::Source::default())
            .expect("loads")
            .flow
    }

    fn executor(body: &str) -> Executor {
        let yaml = format!("jtype: Flow\nexecutors:\n  - name: a\n{body}");
        flow(&yaml).executors.remove(0)
    }

    fn opts(workspace: Option<&str>) -> LocalOptions {
        let mut o = LocalOptions::discover("/flows/f".into(), "/flows/f/work".into());
        o.jina = "jina".into();
        o.bin_dir = Some("/opt/zf/bin".into());
        o.workspace = workspace.map(PathBuf::from);
        o
    }

    /// Only `/opt/zf/bin/rust-exec` exists.
    fn exists(p: &Path) -> bool {
        p == Path::new("/opt/zf/bin/rust-exec")
    }

    fn argv(body: &str, shard: u32, workspace: Option<&str>) -> Vec<String> {
        build(&executor(body), shard, &opts(workspace), &exists)
            .expect("builds")
            .argv
    }

    fn after<'a>(cmd: &'a [String], flag: &str) -> Option<&'a str> {
        let at = cmd.iter().position(|a| a == flag)?;
        cmd.get(at + 1).map(String::as_str)
    }

    fn jina(uses: &str, rest: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "jina",
            "executor",
            "--uses",
            uses,
            "--name",
            "a",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--native",
        ]
        .map(String::from)
        .to_vec();
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn commands_as_the_flow_gives_them() {
        let cases: &[(&str, &str, Vec<String>)] = &[
            (
                "a bare program found in the binaries' folder runs from there",
                "    command: [rust-exec, --port, '{port}']\n",
                ["/opt/zf/bin/rust-exec", "--port", "{port}"]
                    .map(String::from)
                    .to_vec(),
            ),
            (
                "a bare program not there is left to PATH",
                "    command: [python3, -m, exec]\n",
                ["python3", "-m", "exec"].map(String::from).to_vec(),
            ),
            (
                "a path is left as written (the replica runs in the Flow's folder)",
                "    command: [./bin/rust-exec]\n",
                vec!["./bin/rust-exec".to_string()],
            ),
            (
                "no uses: a pass-through BaseExecutor",
                "",
                jina("BaseExecutor", &[]),
            ),
            ("a class name", "    uses: MyExec\n", jina("MyExec", &[])),
            (
                "a relative config is the Flow folder's",
                "    uses: exec/config.yml\n",
                jina("/flows/f/exec/config.yml", &[]),
            ),
            (
                "an absolute config stays",
                "    uses: /srv/config.yml\n",
                jina("/srv/config.yml", &[]),
            ),
            (
                "uses_with, uses_metas, uses_requests as JSON; py_modules resolved",
                "    uses: MyExec\n    uses_with: {k: 1}\n    uses_metas: {m: x}\n    \
                 uses_requests: {/foo: bar}\n    py_modules: [exec.py, /abs/mod.py]\n",
                jina(
                    "MyExec",
                    &[
                        "--uses-with",
                        r#"{"k":1}"#,
                        "--uses-metas",
                        r#"{"m":"x"}"#,
                        "--uses-requests",
                        r#"{"/foo":"bar"}"#,
                        "--py-modules",
                        "/flows/f/exec.py",
                        "/abs/mod.py",
                    ],
                ),
            ),
        ];
        for (what, body, want) in cases {
            assert_eq!(&argv(body, 0, None), want, "{what}");
        }
    }

    #[test]
    fn an_inline_config_is_a_file_in_the_work_folder() {
        let cmd = build(
            &executor("    uses:\n      jtype: MyExec\n      with: {k: 1}\n"),
            0,
            &opts(None),
            &exists,
        )
        .unwrap();
        assert_eq!(after(&cmd.argv, "--uses"), Some("/flows/f/work/a.uses.yml"));
        assert_eq!(cmd.files.len(), 1);
        assert_eq!(cmd.files[0].0, Path::new("/flows/f/work/a.uses.yml"));
        let written: serde_json::Value = serde_json::from_str(&cmd.files[0].1).unwrap();
        assert_eq!(written["jtype"], "MyExec");
    }

    #[test]
    fn images_are_refused_with_what_to_give_instead() {
        for (uses, named) in [
            ("docker://me/exec:1", "docker://me/exec:1"),
            ("jinaai+docker://me/Exec", "jinaai+docker://me/Exec"),
        ] {
            let e = build(
                &executor(&format!("    uses: {uses}\n")),
                0,
                &opts(None),
                &exists,
            )
            .unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(e, RuntimeError::Unsupported { .. }),
                "{uses}: {text}"
            );
            assert!(
                text.contains(named) && text.contains("config.yml"),
                "{text}"
            );
        }
    }

    #[test]
    fn each_shard_is_told_its_id_as_jina_tells_it() {
        let cmd = argv("    shards: 3\n", 2, None);
        assert_eq!(after(&cmd, "--shards"), Some("3"));
        assert_eq!(after(&cmd, "--shard-id"), Some("2"));
        // One shard: Jina's defaults (shard 0 of 1), so nothing is added.
        assert_eq!(after(&argv("", 0, None), "--shard-id"), None);
    }

    #[test]
    fn the_workspace_is_the_flows_else_the_servers() {
        let f = flow(
            "jtype: Flow\nwith:\n  workspace: ws\nexecutors:\n  - name: a\n  - name: b\n    workspace: /abs\n",
        );
        let ws = |e: &Executor, root: Option<&str>| {
            after(
                &build(e, 0, &opts(root), &exists).unwrap().argv,
                "--workspace",
            )
            .map(str::to_string)
        };
        let none = executor("");
        let cases = [
            // `jc flow serve`: a relative workspace is the Flow folder's.
            (&f.executors[0], None, Some("/flows/f/ws")),
            (&f.executors[1], None, Some("/abs")),
            // `jc server`: under the Flow's own data folder.
            (
                &f.executors[0],
                Some("/data/flows/x/workspace"),
                Some("/data/flows/x/workspace/ws"),
            ),
            (
                &f.executors[1],
                Some("/data/flows/x/workspace"),
                Some("/abs"),
            ),
            (
                &none,
                Some("/data/flows/x/workspace"),
                Some("/data/flows/x/workspace"),
            ),
            // Jina's default.
            (&none, None, None),
        ];
        for (e, root, want) in cases {
            assert_eq!(ws(e, root).as_deref(), want, "{} under {root:?}", e.name);
        }
    }

    #[test]
    fn a_missing_program_is_named_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("zf-command-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/not-exec"), "").unwrap();
        let mut o = opts(None);
        o.flow_dir = dir.clone();
        o.env.insert("PATH".into(), "/nonexistent-zf".into());
        let python = executor("");
        let own = executor("    command: [x]\n");
        let cases: &[(&Executor, &str, Option<&str>)] = &[
            (&own, "./bin/not-exec", Some("is not an executable file")),
            (&own, "./bin/gone", Some("does not exist")),
            (&own, "gone-zf", Some("is not on PATH")),
            (&python, "jina-zf", Some("install jina")),
            (&own, "/bin/sh", None),
        ];
        for (e, program, want) in cases {
            let got = check_program(e, &[program.to_string()], &o);
            match want {
                None => assert!(got.is_ok(), "{program}: {got:?}"),
                Some(w) => {
                    let text = got.unwrap_err().to_string();
                    assert!(
                        text.contains(w) && text.contains(program),
                        "{program}: {text}"
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
