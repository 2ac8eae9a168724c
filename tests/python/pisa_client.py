#!/usr/bin/env python3
"""A third-party client of Pisa-Daemon's gRPC API, for the integration tests.

Stubs are generated from the committed proto with PyPI's grpcio-tools into a
temporary directory at start, so the test exercises exactly what a proxy
author would do. Every command prints one JSON document on stdout; a gRPC
error prints {"code": "...", "details": "..."} and still exits 0, so the
caller can assert on the code.

    pisa_client.py --socket PATH call METHOD [REQUEST_JSON]
    pisa_client.py --socket PATH watch INTERVAL_MS COUNT
    pisa_client.py --socket PATH services      # through server reflection
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_ROOT = os.path.join(REPO, "proto")
# gRPC C-core sends the socket path, percent-encoded, as :authority for
# unix: targets; that is not a valid HTTP/2 authority and hyper (under
# tonic) resets the stream. Any gRPC client over a Unix socket should name
# a plain authority, as this one does.
AUTHORITY = [("grpc.default_authority", "localhost")]


def load_stubs(out_dir):
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(PROTO_ROOT, "pisa", "v1", "pisa.proto"),
    ]
    if protoc.main(args) != 0:
        sys.exit("grpc_tools.protoc failed on pisa.proto")
    sys.path.insert(0, out_dir)
    return (
        importlib.import_module("pisa.v1.pisa_pb2"),
        importlib.import_module("pisa.v1.pisa_pb2_grpc"),
    )


def error_json(error):
    return {"code": error.code().name, "details": error.details()}


def call(pb2, stub, method, request_json):
    rpc = getattr(stub, method)
    request_type = {
        "TagFlow": pb2.TagFlowRequest,
        "TagFlows": pb2.TagFlowsRequest,
        "UntagFlow": pb2.UntagFlowRequest,
        "ListClasses": pb2.ListClassesRequest,
        "GetStats": pb2.GetStatsRequest,
        "Validate": pb2.ValidateRequest,
    }[method]
    request = json_format.ParseDict(json.loads(request_json or "{}"), request_type())
    try:
        response = rpc(request, timeout=10)
    except grpc.RpcError as error:
        return error_json(error)
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def watch(pb2, stub, interval_ms, count):
    messages = []
    try:
        stream = stub.WatchStats(pb2.WatchStatsRequest(interval_ms=interval_ms), timeout=60)
        for message in stream:
            messages.append(
                json_format.MessageToDict(message, preserving_proto_field_name=True)
            )
            if len(messages) >= count:
                stream.cancel()
                break
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            return error_json(error)
    return {"messages": messages}


def services(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        for response in stub.ServerReflectionInfo(iter([request]), timeout=10):
            return {
                "services": [s.name for s in response.list_services_response.service]
            }
    except grpc.RpcError as error:
        return error_json(error)
    return {"services": []}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("call")
    c.add_argument("method")
    c.add_argument("request", nargs="?")
    w = sub.add_parser("watch")
    w.add_argument("interval_ms", type=int)
    w.add_argument("count", type=int)
    sub.add_parser("services")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pisa-stubs-") as out_dir:
        pb2, pb2_grpc = load_stubs(out_dir)
        channel = grpc.insecure_channel(f"unix://{args.socket}", options=AUTHORITY)
        stub = pb2_grpc.PisaDaemonStub(channel)
        if args.command == "call":
            result = call(pb2, stub, args.method, args.request)
        elif args.command == "watch":
            result = watch(pb2, stub, args.interval_ms, args.count)
        else:
            result = services(channel)
        channel.close()
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
