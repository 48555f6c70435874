# Executors that the golden Flow specs name by class, so that jina_compat.py can load the specs
# with Jina (which imports py_modules) without network access.
from jina import Executor, requests


class Encoder(Executor):
    @requests
    def encode(self, docs, **kwargs):
        return docs


class Indexer(Executor):
    @requests(on='/index')
    def index(self, docs, **kwargs):
        return docs
