"""The stack's processes write JSON lines that the drill parses: each line must reach the
stream in one write, whole, however many threads emit at once."""
import threading
import unittest

import stack


class RecordingStream:
    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


class EmitWritesWholeLines(unittest.TestCase):
    def test_every_write_is_one_whole_line_under_concurrency(self):
        stream = RecordingStream()

        def emit_many(thread):
            for i in range(200):
                stack.emit(f'{{"thread": {thread}, "i": {i}}}', stream)

        threads = [threading.Thread(target=emit_many, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(stream.writes), 8 * 200)
        for text in stream.writes:
            self.assertTrue(text.startswith("{") and text.endswith("}\n") and text.count("\n") == 1, text)


if __name__ == "__main__":
    unittest.main()
