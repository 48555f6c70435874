"""Drives a Zeroflow gateway with the real, unmodified jina.Client and checks every answer.

Usage: check_client.py SCENARIO [options]; exits non-zero with a message on the first failure.
"""
import argparse
from typing import Optional
import sys

from docarray import BaseDoc, DocList
from docarray.documents import TextDoc
from jina import Client
from jina.excepts import BadServer


class FlowDoc(BaseDoc):
    text: str = ''
    # Optional: a branch that did not set a field leaves it None, which the merge keeps.
    b: Optional[str] = None
    c: Optional[str] = None


def check(cond, msg):
    if not cond:
        print(f'FAIL: {msg}', file=sys.stderr)
        sys.exit(1)
    print(f'ok: {msg}')


def texts(docs):
    return [d.text for d in docs]


def rust_flow_grpc(a):
    """Flow: exec1 (--append -one) -> exec2 (--append -two, 2 replicas)."""
    c = Client(host=a.grpc)
    check(c.is_flow_ready(), 'is_flow_ready() is True')
    docs = DocList[TextDoc]([TextDoc(text=f'd{i}') for i in range(3)])
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc])
    check(texts(r) == ['d0-one-two', 'd1-one-two', 'd2-one-two'], f'stream post: {texts(r)}')
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc], stream=False)
    check(texts(r) == ['d0-one-two', 'd1-one-two', 'd2-one-two'], f'unary post: {texts(r)}')
    many = DocList[TextDoc]([TextDoc(text=f'm{i}') for i in range(50)])
    r = c.post('/', inputs=many, request_size=1, return_type=DocList[TextDoc])
    check(sorted(texts(r)) == sorted(f'm{i}-one-two' for i in range(50)), f'request_size=1, 50 docs: {len(r)} answered')
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc], target_executor='exec1')
    check(texts(r) == ['d0-one', 'd1-one', 'd2-one'], f'target_executor=exec1: {texts(r)}')
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc], target_executor='exec2')
    check(texts(r) == ['d0-two', 'd1-two', 'd2-two'], f'target_executor=exec2: {texts(r)}')
    got = {}
    def on_done(resp):
        got['params'] = resp.parameters
    c.post('/', inputs=docs[:1], parameters={'k': 'v', 'n': 3}, on_done=on_done, return_type=DocList[TextDoc])
    check(got['params'].get('k') == 'v' and got['params'].get('n') == 3, f'parameters round trip: {got["params"]}')
    try:
        c.post('/', inputs=docs[:1], parameters={'raise': 'boom from the test'}, return_type=DocList[TextDoc])
        check(False, 'an Executor error raises BadServer')
    except BadServer as e:
        check('boom from the test' in str(e), f'an Executor error raises BadServer naming the error')


def rust_flow_http(a):
    c = Client(host=a.http)
    check(c.is_flow_ready(), 'HTTP is_flow_ready() is True')
    docs = DocList[TextDoc]([TextDoc(text='h0'), TextDoc(text='h1')])
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc])
    check(texts(r) == ['h0-one-two', 'h1-one-two'], f'HTTP post("/"): {texts(r)}')
    r = c.post('/custom', inputs=docs, return_type=DocList[TextDoc])
    check(texts(r) == ['h0-one-two', 'h1-one-two'], f'HTTP post("/custom") (a named endpoint): {texts(r)}')


def python_flow(a):
    """Flow: start (Appender -py, from py_modules) -> [b, c] in parallel -> join."""
    for host in [a.grpc, a.http]:
        c = Client(host=host)
        check(c.is_flow_ready(), f'{host}: is_flow_ready() is True')
        docs = DocList[FlowDoc]([FlowDoc(text='x'), FlowDoc(text='y')])
        r = c.post('/', inputs=docs, return_type=DocList[FlowDoc])
        check([d.text for d in r] == ['x-py-j', 'y-py-j'], f'{host}: chain text {[d.text for d in r]}')
        check([d.b for d in r] == ['B', 'B'] and [d.c for d in r] == ['C', 'C'],
              f'{host}: both branches merged: b={[d.b for d in r]} c={[d.c for d in r]}')
        r = c.post('/shout', inputs=DocList[FlowDoc]([FlowDoc(text='hey')]), return_type=DocList[FlowDoc])
        check(r[0].text.startswith('HEY!'), f'{host}: named endpoint /shout: {r[0].text}')
    c = Client(host=a.grpc)
    try:
        c.post('/', inputs=DocList[FlowDoc]([FlowDoc(text='x')]), parameters={'raise': 'python boom'},
               return_type=DocList[FlowDoc])
        check(False, 'a Python Executor exception raises BadServer')
    except BadServer as e:
        check('python boom' in str(e), 'a Python Executor exception raises BadServer naming it')
    r = c.post('/', inputs=DocList[FlowDoc]([FlowDoc(text='s')]), stream=False, return_type=DocList[FlowDoc])
    check(r[0].text == 's-py-j', f'unary post through Python Executors: {r[0].text}')


def single(a):
    """Any gateway with one Appender(-py) Executor: one post."""
    c = Client(host=a.grpc)
    r = c.post('/', inputs=DocList[FlowDoc]([FlowDoc(text='a')]), return_type=DocList[FlowDoc])
    check(r[0].text == 'a' + a.suffix, f'post through the gateway: {r[0].text}')


def echo_text(a):
    """A Flow of one echoing Executor (the Rust test Executor): one post, timed."""
    import time
    c = Client(host=a.grpc)
    t0 = time.monotonic()
    r = c.post('/', inputs=DocList[TextDoc]([TextDoc(text='wake')]), return_type=DocList[TextDoc])
    check(r[0].text == 'wake' + a.suffix, f'answered {r[0].text!r} in {time.monotonic() - t0:.3f} s')


def hello_world(a):
    """The `jc new` project's Flow: every text comes back as 'hello, world!'."""
    c = Client(host=a.grpc)
    check(c.is_flow_ready(), 'is_flow_ready() is True')
    docs = DocList[TextDoc]([TextDoc(text=f't{i}') for i in range(3)])
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc])
    want = 'hello, world!' + a.suffix
    check(texts(r) == [want] * 3, f'the project Executor answered: {texts(r)}')


def when_flow(a):
    """tagger (-t) -> cats (-cat, when text ^cat) and dogs (-dog, when text ^dog) -> join."""
    c = Client(host=a.grpc)
    docs = DocList[TextDoc]([TextDoc(text=t) for t in ['cat1', 'dog1', 'fish1', 'cat2']])
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc])
    check(sorted(texts(r)) == ['cat1-t-cat', 'cat2-t-cat', 'dog1-t-dog'],
          f'each branch got only the documents its condition holds for, fish matched none: {texts(r)}')
    r = c.post('/', inputs=DocList[TextDoc]([TextDoc(text='fish2')]), return_type=DocList[TextDoc])
    check(texts(r) == [], f'no document matches either branch: {texts(r)}')


def rust_flow_ws(a):
    """The Flow of rust_flow_grpc, through its websocket listener."""
    c = Client(host=a.ws)
    check(c.is_flow_ready(), 'is_flow_ready() is True over websocket')
    docs = DocList[TextDoc]([TextDoc(text=f'd{i}') for i in range(3)])
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc])
    check(texts(r) == ['d0-one-two', 'd1-one-two', 'd2-one-two'], f'websocket post: {texts(r)}')
    many = DocList[TextDoc]([TextDoc(text=f'm{i}') for i in range(50)])
    r = c.post('/', inputs=many, request_size=1, return_type=DocList[TextDoc])
    check(sorted(texts(r)) == sorted(f'm{i}-one-two' for i in range(50)), f'request_size=1, 50 docs: {len(r)} answered')
    r = c.post('/', inputs=docs, return_type=DocList[TextDoc], target_executor='exec2')
    check(texts(r) == ['d0-two', 'd1-two', 'd2-two'], f'target_executor=exec2: {texts(r)}')
    got = {}
    def on_done(resp):
        got['params'] = resp.parameters
    c.post('/', inputs=docs[:1], parameters={'k': 'v'}, on_done=on_done, return_type=DocList[TextDoc])
    check(got['params'].get('k') == 'v', f'parameters round trip: {got["params"]}')
    try:
        c.post('/', inputs=docs[:1], parameters={'raise': 'boom over websocket'}, return_type=DocList[TextDoc])
        check(False, 'an Executor error raises BadServer')
    except BadServer as e:
        check('boom over websocket' in str(e), 'an Executor error raises BadServer naming the error')


SCENARIOS = {f.__name__: f for f in [rust_flow_grpc, rust_flow_http, rust_flow_ws, python_flow, single, echo_text, hello_world, when_flow]}

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('scenario', choices=sorted(SCENARIOS))
    p.add_argument('--grpc')
    p.add_argument('--http')
    p.add_argument('--ws')
    p.add_argument('--suffix', default='')
    args = p.parse_args()
    SCENARIOS[args.scenario](args)
