//! `load` must never panic, whatever it is given: thousands of deterministic mutations of the
//! golden specs, plus arbitrary text from proptest. Loaded results must still be coherent.

use proptest::prelude::*;
use std::fs;
use std::path::Path;
use zeroflow_spec::{FileError, FileReader, Source, load, load_with_files};

/// Gives the spec itself for every file it names, so that whatever the mutations make of the
/// spec is also loaded as a Deployment YAML.
struct Echo<'a>(&'a str);

impl FileReader for Echo<'_> {
    fn read(&self, path: &str) -> Result<String, FileError> {
        if path.contains("missing") {
            return Err(FileError::NotFound);
        }
        Ok(self.0.to_string())
    }
}

/// xorshift64*: deterministic, so a failure reproduces from the printed case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    "- ",
    " ",
    "\n",
    "\n  ",
    "\t",
    "'",
    "\"",
    "$",
    "${{ ENV.X }}",
    "&a ",
    "*a",
    "!Flow ",
    "!Deployment\n",
    "Hello!World",
    "!!str ",
    "- dep.yml\n",
    "- missing.yml\n",
    "- 'jtype: Deployment|{uses: A}'\n",
    "- '{\"jtype\": \"Deployment\"}'\n",
    "method: inspect\n",
    "method: needs_all\n",
    "port_expose: $P\n",
    "pods:\n",
    "<<: ",
    "~",
    "0",
    "-1",
    "99999999999999999999",
    "1.5",
    "yes",
    "null",
    "gateway",
    "needs: ",
    "jtype: Deployment\n",
    "version: 2\n",
    "jcloud:\n  autoscale:\n    max: 9\n",
    "\u{0}",
    "é",
    "#",
];

fn mutate(base: &[u8], rng: &mut Rng) -> String {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] = (rng.next() & 0xff) as u8;
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let i = rng.below(len + 1);
                b.splice(i..i, t.iter().copied());
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(16)).min(len);
                b.drain(i..j);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = b[i..j].to_vec();
                let k = rng.below(len + 1);
                b.splice(k..k, chunk);
            }
            4 => b.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                // Re-indent: shifts a whole subtree to another parent.
                let i = rng.below(len);
                b.insert(i, b' ');
                b.insert(i, b' ');
            }
            _ => {
                let lines: Vec<&[u8]> = base.split(|c| *c == b'\n').collect();
                if lines.len() > 1 {
                    let i = rng.below(lines.len());
                    let j = rng.below(lines.len());
                    let mut out: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
                    out.swap(i, j);
                    b = out.join(&b'\n');
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn source() -> Source {
    let mut s = Source {
        name: "fuzz.yml".into(),
        ..Default::default()
    };
    s.env.insert("X".into(), "3".into());
    s
}

fn check(text: &str) {
    check_loaded(text, load(text, &source()));
    check_loaded(text, load_with_files(text, &source(), &Echo(text)));
}

fn check_loaded(text: &str, loaded: Result<zeroflow_spec::Loaded, zeroflow_spec::SpecError>) {
    match loaded {
        Ok(l) => {
            let names: Vec<&str> = l.flow.executors.iter().map(|e| e.name.as_str()).collect();
            for e in &l.flow.executors {
                for n in &e.needs {
                    assert!(
                        n == "gateway" || names.contains(&n.as_str()),
                        "dangling need {n} in {text:?}"
                    );
                }
                let a = &e.jcloud.autoscale;
                assert!(
                    a.min <= a.max && a.max <= 5,
                    "autoscale {a:?} out of bounds in {text:?}"
                );
            }
            let _ = l.warnings.iter().map(ToString::to_string).count();
        }
        Err(e) => {
            assert!(
                !e.errors.is_empty(),
                "error without diagnostics for {text:?}"
            );
            let _ = e.to_string();
        }
    }
}

#[test]
fn mutated_golden_specs_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs");
    let mut bases = Vec::new();
    for kind in ["good", "bad"] {
        for e in fs::read_dir(dir.join(kind)).expect("specs dir").flatten() {
            if e.path().extension().is_some_and(|x| x == "yml") {
                bases.push(fs::read(e.path()).expect("read"));
            }
        }
    }
    bases.sort();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let per_base = 400;
    for base in &bases {
        for _ in 0..per_base {
            check(&mutate(base, &mut rng));
        }
    }
    assert!(bases.len() * per_base >= 10_000);
}

#[test]
fn hostile_shapes_never_panic() {
    let deep = "a:\n".to_string() + &"  ".repeat(200) + "b: 1\n";
    let nested = "[".repeat(10_000);
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    let long_key = format!("jtype: Flow\n{}: 1\n", "k".repeat(100_000));
    let many = "jtype: Flow\nexecutors:\n".to_string() + &"  - {}\n".repeat(2_000);
    for t in [
        deep.as_str(),
        nested.as_str(),
        laughs,
        long_key.as_str(),
        many.as_str(),
        "",
        "\u{feff}",
        "---\n---\n",
        "!Flow",
        "jtype: Flow\nexecutors: [[[]]]",
    ] {
        check(t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        check(&s);
    }

    #[test]
    fn yamlish_text_never_panics(s in "(jtype: (Flow|Deployment)\n)?((executors|with|jcloud|gateway|needs|name|replicas|version|autoscale|min|max|-|  |: |\\[|\\]|\\{|\\}|\n|[a-z0-9]{1,4}|\\$\\{\\{ ENV.X \\}\\}|!Flow|&a|\\*a)){0,60}") {
        check(&s);
    }

    #[test]
    fn old_tag_text_never_panics(s in "(!(Flow|Deployment|x)\n)?((executors|deployments|with|uses|name|method|inspect|needs_all|- |  |: |'|\"|#|!|!!|[A-Za-z]{1,3}!?[A-Za-z]{0,3}|\\||\n|d\\.yml|jtype|é)){0,60}") {
        check(&s);
    }
}
