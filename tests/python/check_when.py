"""Prints, for each condition in when_cases.json, the ids of the documents docarray's own
filter_docs keeps (the function jina's gateway applies for `when:`), as JSON lines. A document
the condition cannot be evaluated on in Python (comparing a string with a number) is listed as
"!id": jina fails such a request, Zeroflow does not send that document."""
import json
import sys

from docarray import DocList
from docarray.documents.legacy import LegacyDocument
from docarray.utils.filter import filter_docs

cases = json.load(open(sys.argv[1]))
docs = [LegacyDocument(**d) for d in cases["docs"]]
for cond in cases["conditions"]:
    out = []
    for d in docs:
        try:
            if len(filter_docs(DocList[LegacyDocument]([d]), cond)) == 1:
                out.append(d.id)
        except (TypeError, IndexError, ValueError):
            out.append("!" + d.id)
    print(json.dumps(out))
