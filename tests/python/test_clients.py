"""tierkv through Python stubs generated from proto/ by grpcio-tools.

A client we did not write: the official gRPC Python runtime, talking to the real
server. Run by tests/clients.rs, which starts the server, generates the stubs and
sets TIERKV_ENDPOINT (host:port) and PYTHONPATH; by hand:

    python3 -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT proto/tierkv/v1/*.proto
    TIERKV_ENDPOINT=127.0.0.1:50051 PYTHONPATH=OUT python3 -m unittest -v tests/python/test_clients.py
"""

import os
import unittest
import uuid

import grpc
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tierkv.v1 import cache_pb2, cache_pb2_grpc, kv_pb2, kv_pb2_grpc, session_pb2, session_pb2_grpc

ENDPOINT = os.environ.get("TIERKV_ENDPOINT", "127.0.0.1:50051")


def unique(prefix):
    """A key no other test uses, so tests are independent of order."""
    return f"{prefix}{uuid.uuid4().hex}"


def details(error):
    """The google.rpc details of a failed call, unpacked by type name."""
    status = rpc_status.from_call(error)
    found = {}
    if status is None:
        return found
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


def json_value(obj):
    """A google.protobuf.Value holding `obj`."""
    value = struct_pb2.Value()
    if obj is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, dict):
        value.struct_value.update(obj)
    elif isinstance(obj, str):
        value.string_value = obj
    else:
        raise TypeError(obj)
    return value


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.channel = grpc.insecure_channel(ENDPOINT)
        grpc.channel_ready_future(cls.channel).result(timeout=30)
        cls.kv = kv_pb2_grpc.KvServiceStub(cls.channel)
        cls.sessions = session_pb2_grpc.SessionServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()


class KvTest(Base):
    def test_put_get_json_roundtrip_with_metadata_and_ttl(self):
        key = unique("user:py:")
        put = self.kv.Put(
            kv_pb2.PutRequest(
                key=key,
                json=json_value({"name": "John", "age": 42}),
                metadata=json_value({"source": "python"}),
                ttl=duration_pb2.Duration(seconds=3600),
            ),
            timeout=10,
        )
        self.assertGreater(put.version, 0)
        got = self.kv.Get(kv_pb2.GetRequest(key=key), timeout=10)
        self.assertTrue(got.found)
        self.assertEqual(got.json.struct_value["name"], "John")
        self.assertEqual(got.json.struct_value["age"], 42)
        self.assertEqual(got.metadata.struct_value["source"], "python")
        self.assertEqual(got.version, put.version)
        self.assertTrue(got.HasField("expire_time"))
        as_text = self.kv.Get(
            kv_pb2.GetRequest(key=key, type=kv_pb2.VALUE_TYPE_TEXT), timeout=10
        )
        self.assertIn('"name":"John"', as_text.text.replace(" ", ""))

    def test_patch_merges_fields_atomically(self):
        key = unique("user:patch:")
        self.kv.Put(kv_pb2.PutRequest(key=key, json=json_value({"name": "John", "role": "admin"})), timeout=5)
        response = self.kv.Patch(
            kv_pb2.PatchRequest(key=key, merge_patch=json_value({"role": None, "theme": "dark"})), timeout=5
        )
        self.assertEqual(dict(response.value.struct_value), {"name": "John", "theme": "dark"})
        with self.assertRaises(grpc.RpcError) as missing:
            self.kv.Patch(kv_pb2.PatchRequest(key=unique("user:none:"), merge_patch=json_value({"a": "b"})), timeout=5)
        self.assertEqual(missing.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_fallback_answers_a_missing_key(self):
        response = self.kv.Get(
            kv_pb2.GetRequest(key=unique("flags:"), fallback=json_value({"beta": "off"})), timeout=5
        )
        self.assertFalse(response.found)
        self.assertTrue(response.from_fallback)
        self.assertEqual(dict(response.json.struct_value), {"beta": "off"})

    def test_missing_key_is_found_false_not_an_error(self):
        got = self.kv.Get(kv_pb2.GetRequest(key=unique("user:py:missing:")), timeout=10)
        self.assertFalse(got.found)

    def test_failed_compare_and_set_is_aborted_with_details_and_current_version(self):
        key = unique("user:py:cas:")
        first = self.kv.Put(kv_pb2.PutRequest(key=key, text="a"), timeout=10)
        with self.assertRaises(grpc.RpcError) as raised:
            self.kv.Put(
                kv_pb2.PutRequest(key=key, text="b", if_version=first.version + 100),
                timeout=10,
            )
        error = raised.exception
        self.assertEqual(error.code(), grpc.StatusCode.ABORTED)
        found = details(error)
        self.assertEqual(found["ErrorInfo"].reason, "VERSION_MISMATCH")
        self.assertEqual(found["ErrorInfo"].domain, "tierkv.v1")
        self.assertEqual(found["ErrorInfo"].metadata["current_version"], str(first.version))
        self.assertIn("PreconditionFailure", found)
        trailers = dict(error.trailing_metadata())
        self.assertEqual(trailers["tierkv-current-version"], str(first.version))
        # Nothing was lost: the first value is still there.
        self.assertEqual(self.kv.Get(kv_pb2.GetRequest(key=key), timeout=10).text, "a")

    def test_oversized_key_is_invalid_argument_naming_the_limit(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.kv.Put(kv_pb2.PutRequest(key="user:" + "k" * 600, text="v"), timeout=10)
        error = raised.exception
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("512", error.details())
        violations = details(error)["BadRequest"].field_violations
        self.assertEqual(violations[0].field, "key")

    def test_session_namespace_is_permission_denied_for_kv(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.kv.Get(kv_pb2.GetRequest(key="session:s/anything"), timeout=10)
        error = raised.exception
        self.assertEqual(error.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(details(error)["ErrorInfo"].reason, "NAMESPACE_OWNED")

    def test_batch_write_then_paged_list(self):
        prefix = unique("feature:py:") + ":"
        mutations = [
            kv_pb2.Mutation(put=kv_pb2.PutRequest(key=f"{prefix}{i:02}", text=str(i)))
            for i in range(5)
        ]
        written = self.kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=10)
        self.assertEqual(len(written.results), 5)
        names, token = [], ""
        while True:
            page = self.kv.List(
                kv_pb2.ListRequest(prefix=prefix, page_size=2, page_token=token), timeout=10
            )
            self.assertLessEqual(len(page.keys), 2)
            names.extend(entry.name for entry in page.keys)
            token = page.next_page_token
            if not token:
                break
        self.assertEqual(names, [f"{prefix}{i:02}" for i in range(5)])
        got = self.kv.BatchGet(kv_pb2.BatchGetRequest(keys=names[:3]), timeout=10)
        self.assertEqual([result.text for result in got.results], ["0", "1", "2"])

    def test_deadline_is_deadline_exceeded(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.kv.Get(kv_pb2.GetRequest(key="user:py:deadline"), timeout=0.000001)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)


class SessionTest(Base):
    def test_create_get_update_revoke(self):
        data = struct_pb2.Struct()
        data.update({"cart": ["a"], "theme": "dark"})
        created = self.sessions.Create(
            session_pb2.CreateSessionRequest(
                user_id=unique("py-user-"),
                ttl=duration_pb2.Duration(seconds=3600),
                data=data,
            ),
            timeout=10,
        )
        self.assertIn(".", created.token)
        self.assertTrue(created.session_id)
        got = self.sessions.Get(session_pb2.GetSessionRequest(token=created.token), timeout=10)
        self.assertEqual(got.data["theme"], "dark")
        self.assertEqual(got.token, "", "the token is returned only by Create and Rotate")
        patch = struct_pb2.Struct()
        patch.update({"theme": None, "lang": "en"})
        updated = self.sessions.Update(
            session_pb2.UpdateSessionRequest(token=created.token, data=patch), timeout=10
        )
        self.assertNotIn("theme", updated.data)
        self.assertEqual(updated.data["lang"], "en")
        with self.assertRaises(grpc.RpcError) as raised:
            self.sessions.Update(
                session_pb2.UpdateSessionRequest(
                    token=created.token, data=patch, if_version=updated.version + 1
                ),
                timeout=10,
            )
        self.assertEqual(raised.exception.code(), grpc.StatusCode.ABORTED)
        revoked = self.sessions.Revoke(
            session_pb2.RevokeSessionRequest(token=created.token), timeout=10
        )
        self.assertTrue(revoked.revoked)
        with self.assertRaises(grpc.RpcError) as raised:
            self.sessions.Get(session_pb2.GetSessionRequest(token=created.token), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_bad_token_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.sessions.Get(session_pb2.GetSessionRequest(token="not-a-token"), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)


class CacheTest(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cache = cache_pb2_grpc.CacheServiceStub(cls.channel)

    def test_cache_aside_put_get_and_coherence_with_kv(self):
        key = unique("cache:py:")
        put = self.cache.Put(
            cache_pb2.CachePutRequest(
                key=key, text="v1", store_ttl=duration_pb2.Duration(seconds=300)
            ),
            timeout=10,
        )
        self.assertGreater(put.version, 0)
        got = self.cache.Get(cache_pb2.CacheGetRequest(key=key), timeout=10)
        self.assertTrue(got.found)
        self.assertEqual(got.text, "v1")
        self.assertIn(got.tier, (cache_pb2.CACHE_TIER_MEMORY, cache_pb2.CACHE_TIER_STORE))
        # The record is an ordinary one: KvService reads it, and a KvService
        # write is what the next cache read returns.
        self.assertEqual(self.kv.Get(kv_pb2.GetRequest(key=key), timeout=10).text, "v1")
        self.kv.Put(kv_pb2.PutRequest(key=key, text="v2"), timeout=10)
        self.assertEqual(self.cache.Get(cache_pb2.CacheGetRequest(key=key), timeout=10).text, "v2")
        self.cache.Invalidate(cache_pb2.InvalidateRequest(key=key), timeout=10)
        self.assertFalse(self.cache.Get(cache_pb2.CacheGetRequest(key=key), timeout=10).found)

    def test_purge_and_errors(self):
        prefix = unique("cache:pyp:") + ":"
        for i in range(3):
            self.cache.Put(cache_pb2.CachePutRequest(key=f"{prefix}{i}", text="x"), timeout=10)
        counted = self.cache.Purge(cache_pb2.PurgeRequest(prefix=prefix, dry_run=True), timeout=10)
        self.assertEqual((counted.listed, counted.purged), (3, 0))
        with self.assertRaises(grpc.RpcError) as raised:
            self.cache.Purge(cache_pb2.PurgeRequest(prefix=prefix), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        purged = self.cache.Purge(cache_pb2.PurgeRequest(prefix=prefix, expected_keys=3), timeout=10)
        self.assertEqual(purged.purged, 3)
        with self.assertRaises(grpc.RpcError) as raised:
            self.cache.Put(cache_pb2.CachePutRequest(key="", text="x"), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("BadRequest", details(raised.exception))
        with self.assertRaises(grpc.RpcError) as raised:
            self.cache.Get(cache_pb2.CacheGetRequest(key="session:s/x"), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.PERMISSION_DENIED)


class ServiceConfigTest(unittest.TestCase):
    """deploy/grpc-service-config.json loads in the official runtime and the
    calls it configures work (grpc refuses a channel whose config is invalid)."""

    def test_channel_with_the_published_service_config(self):
        path = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "grpc-service-config.json")
        with open(path) as config:
            service_config = config.read()
        channel = grpc.insecure_channel(
            ENDPOINT,
            options=[("grpc.enable_retries", 1), ("grpc.service_config", service_config)],
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
            kv = kv_pb2_grpc.KvServiceStub(channel)
            response = kv.Get(kv_pb2.GetRequest(key=unique("config:")), timeout=5)
            self.assertFalse(response.found)
            listed = kv.List(kv_pb2.ListRequest(prefix=unique("config:")), timeout=5)
            self.assertEqual(len(listed.keys), 0)
        finally:
            channel.close()


if __name__ == "__main__":
    unittest.main()
