"""Python Executors for Zeroflow's end-to-end tests, run by a real `jina executor`."""
import os
from typing import Optional

from docarray import BaseDoc, DocList
from jina import Executor, requests


class FlowDoc(BaseDoc):
    text: str = ''
    # Optional: a branch that did not set a field leaves it None, which the merge keeps.
    b: Optional[str] = None
    c: Optional[str] = None


class Appender(Executor):
    """Appends `suffix` to every document's text; on `/fail` it raises."""

    def __init__(self, suffix: str = '', field: str = 'text', **kwargs):
        super().__init__(**kwargs)
        self.suffix = suffix
        self.field = field

    @requests
    def append(self, docs: DocList[FlowDoc], parameters: Optional[dict] = None, **kwargs) -> DocList[FlowDoc]:
        if parameters and parameters.get('raise'):
            raise ValueError(str(parameters['raise']))
        for d in docs:
            setattr(d, self.field, (getattr(d, self.field) or '') + self.suffix)
        return docs

    @requests(on='/shout')
    def shout(self, docs: DocList[FlowDoc], **kwargs) -> DocList[FlowDoc]:
        for d in docs:
            d.text = d.text.upper() + '!'
        return docs


class ShardReporter(Executor):
    """Adds one document per shard: its id names the shard Jina says this is, its text is the
    shard's workspace, where it also appends the ids it saw (so the test can see the files)."""

    @requests
    def report(self, docs: DocList[FlowDoc], **kwargs) -> DocList[FlowDoc]:
        shard = self.runtime_args.shard_id
        with open(os.path.join(self.workspace, 'seen.txt'), 'a') as f:
            for d in docs:
                f.write(d.id + '\n')
        docs.append(FlowDoc(id=f'shard-{shard}', text=self.workspace))
        return docs
