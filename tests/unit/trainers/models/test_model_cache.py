"""`trainers.models.model_cache.ModelCache`: one budget for models of every kind, least recently used out first."""

from dataclasses import dataclass

from trainers.models.model_cache import ModelCache


@dataclass
class Fake:
    name: str
    weight_bytes: int


def test_least_recently_used_entries_leave_once_the_budget_is_passed_whatever_their_kind():
    cache = ModelCache(cache_bytes=250)
    loaded = []

    def loader(name, size):
        def load():
            loaded.append(name)
            return Fake(name, size)

        return load

    assert cache.get("scorer", "dir-a", loader("a", 100)).name == "a"
    assert cache.get("chat_model", "dir-a", loader("a-chat", 100)).name == "a-chat"  # same key, other kind
    assert cache.get("scorer", "dir-a", loader("a", 100)).name == "a"  # cached: no load
    assert cache.get("chat_model", "builtin:x", loader("x", 100)).name == "x"  # over budget: LRU (/a chat) leaves
    assert cache.stats()["cached"] == ["dir-a", "builtin:x"]
    assert [e["kind"] for e in cache.stats()["entries"]] == ["scorer", "chat_model"]
    assert loaded == ["a", "a-chat", "x"] and cache.loads == 3 and cache.total_bytes() == 200


def test_a_model_larger_than_the_budget_is_kept_alone_and_clear_empties_the_cache():
    cache = ModelCache(cache_bytes=10)
    cache.get("scorer", "k1", lambda: Fake("1", 50))
    cache.get("scorer", "k2", lambda: Fake("2", 50))
    assert cache.stats()["cached"] == ["k2"]
    cache.clear()
    assert cache.stats()["cached"] == [] and cache.total_bytes() == 0


def test_a_deleted_directory_is_loaded_again_rather_than_served_from_memory(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    cache = ModelCache(cache_bytes=10**6)
    cache.get("scorer", str(directory), lambda: Fake("1", 1))
    assert cache.get("scorer", str(directory), lambda: Fake("2", 1)).name == "1"
    directory.rmdir()
    assert cache.get("scorer", str(directory), lambda: Fake("3", 1)).name == "3"
