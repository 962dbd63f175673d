"""Reading JSON that may be damaged or hostile: every way it can be wrong is one UserError line. Python's json module
recurses once per level of nesting, so `[[[[...]]]]` 100,000 deep raises RecursionError, and a value a few hundred
levels deep that does parse can still overflow the stack of whatever walks it next. No file b_lm reads nests more than
a handful of levels: anything deeper than MAX_DEPTH is refused here, once, for every reader."""
import json
import os

from errors import UserError, short_reason
from files import check_input_file

MAX_DEPTH = 100


def read_json(path, what="JSON", missing=None):
    """The value a JSON file holds; UserError if it is missing, unreadable, not UTF-8, not JSON or too deep.
    `what` names the kind of file ("tokenizer JSON"); `missing`, if given, is the message for a file not there."""
    if not path or os.path.lexists(path):  # a pipe would be read forever; a folder or device is no JSON file
        check_input_file(path, f"the {what} file")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:  # a file that went missing gets the caller's message, if it gave one
        gone = missing if isinstance(e, FileNotFoundError) else None
        raise UserError(gone or f"cannot read the {what} file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a valid {what} file (not UTF-8 text: {e.reason} at byte {e.start})") from None
    return parse_json(text, f"{path} is not a valid {what} file")


def parse_json(text, failure="not valid JSON"):
    """The value a JSON text holds; UserError "<failure> (what is wrong)" if it holds none."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at " + (f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno} column {e.colno}")
    except RecursionError:
        problem = f"nested more than {MAX_DEPTH} levels deep"
    except ValueError as e:  # Python refuses integers of more than 4300 digits
        problem = "a number with more than 4300 digits" if "digits" in str(e) else short_reason(e, 120)
    else:
        if _depth(value) <= MAX_DEPTH:
            return value
        problem = f"nested more than {MAX_DEPTH} levels deep"
    raise UserError(f"{failure} ({problem})")


def _depth(value):
    """How deep lists and objects nest in a parsed value (a scalar is 0), without recursing; stops past MAX_DEPTH."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_DEPTH:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return deepest


def read_object(path, missing=None):
    obj = read_json(path, missing=missing)
    if not isinstance(obj, dict):
        kinds = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
        raise UserError(f"{path} holds a JSON {kinds.get(type(obj), 'value')}, not an object")
    return obj


def as_json(value, limit=60):
    """A JSON value as a message shows it: as JSON, on one line, cut short if long."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
