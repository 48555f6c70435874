//! `jc new [PATH]`: the public client's starter project (jcloud-rest-api.md section 7), with an
//! Executor written for jina 3.34 and docarray v2 (the public template still uses the removed
//! `DocumentArray` API).

use super::api::{Fail, Result};
use std::path::Path;

pub const FLOW_YML: &str =
    "jtype: Flow\nexecutors:\n  - name: executor1\n    uses: executor1/config.yml\n";
pub const CONFIG_YML: &str = "jtype: MyExecutor\nmetas:\n  py_modules:\n    - executor.py\n";
pub const EXECUTOR_PY: &str = r#"from docarray import DocList
from docarray.documents import TextDoc
from jina import Executor, requests


class MyExecutor(Executor):
    @requests
    def foo(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = 'hello, world!'
        return docs
"#;

pub fn create(path: &Path) -> Result<()> {
    if path.exists()
        && std::fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Fail::Usage(format!(
            "{} already exists and is not an empty folder: choose another PATH",
            path.display()
        )));
    }
    let files: [(&str, &str); 5] = [
        (".env", ""),
        ("flow.yml", FLOW_YML),
        ("executor1/config.yml", CONFIG_YML),
        ("executor1/executor.py", EXECUTOR_PY),
        ("executor1/requirements.txt", ""),
    ];
    for (rel, text) in files {
        let p = path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Fail::Usage(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&p, text)
            .map_err(|e| Fail::Usage(format!("cannot write {}: {e}", p.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_project_and_refuses_to_overwrite() {
        let d = std::env::temp_dir().join(format!("jc-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        create(&d).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("flow.yml")).unwrap(),
            FLOW_YML
        );
        assert!(d.join("executor1/executor.py").exists());
        assert!(d.join(".env").exists());
        let e = create(&d).unwrap_err();
        assert_eq!(e.code(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }
}
