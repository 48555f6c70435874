# Runs `jina gateway ARGS...` unchanged except for one start-up step. Jina's gateway (docarray v2)
# asks each Executor for per-endpoint document schemas at start-up and crashes with a KeyError when
# an endpoint has none; zeroflow-test-executor sends none. For such endpoints this fills in the
# models jina itself uses for a Python Executor whose endpoint has no type hints (LegacyDocument in
# and out), so the data path is jina's own, as for an untyped Python Executor.
import asyncio
import sys

from jina._docarray import LegacyDocumentJina
from jina.serve.runtimes.gateway.graph import topology_graph as tg

_node = tg.TopologyGraph._ReqReplyNode
_original = _node.get_endpoints


def _get_endpoints(self, *args, **kwargs):
    inner = _original(self, *args, **kwargs)

    async def fill():
        result = await inner
        if self._pydantic_models_by_endpoint is not None:
            for endpoint in self.endpoints or []:
                self._pydantic_models_by_endpoint.setdefault(
                    endpoint,
                    {
                        'input': LegacyDocumentJina,
                        'output': LegacyDocumentJina,
                        'is_generator': False,
                        'is_singleton_doc': False,
                        'parameters': None,
                    },
                )
        return result

    return asyncio.create_task(fill())


_node.get_endpoints = _get_endpoints

from jina_cli import main  # noqa: E402

sys.argv = ['jina', *sys.argv[1:]]
main()
