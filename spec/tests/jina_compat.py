"""Loads every golden good spec with Jina itself and checks that Zeroflow's normalized output
(the sibling .json) has the same Executors, in the same order, with the same `needs`, replicas,
shards and workspace.

Run with the project venv: JINA_OPTOUT_TELEMETRY=1 .venv/bin/python spec/tests/jina_compat.py
A spec whose first lines hold `# jina-compat: skip (<reason>)` is not checked. Nothing is
started: `load_config` only reads the YAML (hub and docker references resolve at start).
Jina runs from the specs' folder, as Zeroflow reads the paths in a spec relative to its folder.
Zeroflow leaves inspect Executors out, so Jina's graph is compared as `inspect: REMOVE` builds
it: without them, and with what needed their pass-through needing the inspected Executor.
Exits non-zero on any mismatch or load failure.
"""

import json
import os
import re
import sys
import warnings
from pathlib import Path

os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
os.environ.setdefault('JINA_LOG_LEVEL', 'ERROR')

SPECS = Path(__file__).resolve().parent / 'specs'
SOURCE = json.loads((SPECS / 'source.json').read_text())


def jina_view(path: Path, is_deployment: bool):
    import jina

    ctx = SOURCE['context']
    if is_deployment:
        d = jina.Deployment.load_config(str(path), context=ctx)
        return [(d.args.name, ['gateway'], d.args.replicas, d.args.shards, d.args.workspace)]
    f = jina.Flow.load_config(str(path), context=ctx)
    removed = {v: k for k, v in f._inspect_deployments.items()}
    return [
        (name, sorted(removed.get(n, n) for n in node.needs), node.args.replicas,
         node.args.shards, node.args.workspace)
        for name, node in f._deployment_nodes.items()
        if not node.role.is_inspect
    ]


def zeroflow_view(path: Path):
    flow = json.loads(path.with_suffix('.json').read_text())['flow']
    return [
        # Jina makes a Flow's workspace absolute (from the current folder) as it loads it.
        (e['name'], sorted(e['needs']), e['replicas'], e['shards'],
         os.path.abspath(e['workspace']) if e.get('workspace') else None)
        for e in flow['executors']
    ]


def main() -> int:
    os.environ.update(SOURCE['env'])
    os.chdir(SPECS / 'good')
    failures = 0
    checked = 0
    for path in sorted((SPECS / 'good').glob('*.yml')):
        text = path.read_text()
        head = '\n'.join(text.splitlines()[:5])
        skip = re.search(r'#\s*jina-compat:\s*skip\s*(.*)', head)
        if skip:
            print(f'SKIP {path.name}: {skip.group(1).strip()}')
            continue
        is_deployment = re.search(r'^jtype:\s*Deployment\s*$', text, re.M) is not None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                ours = zeroflow_view(path)
                theirs = jina_view(path, is_deployment)
        except BaseException as e:  # Jina exits through argparse on some errors
            print(f'FAIL {path.name}: jina could not load it: {type(e).__name__}: {e}')
            failures += 1
            continue
        checked += 1
        if ours == theirs:
            print(f'OK   {path.name}: {len(ours)} executor(s)')
        else:
            failures += 1
            print(f'FAIL {path.name}:\n  zeroflow: {ours}\n  jina:     {theirs}')
    print(f'{checked} checked, {failures} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
