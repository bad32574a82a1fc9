"""An MCP server written for the tests with the `mcp` SDK: real tools, one that reports an
error, one that crashes its server and one that hangs. `python mcp_fixture_server.py` serves
on stdio; `... http PORT` serves streamable HTTP on 127.0.0.1. MCP_FIXTURE_VARIANT=changed
changes the schema of `add` (a replay must notice)."""

import os
import sys
import time

from mcp.server.fastmcp import FastMCP

server = FastMCP(
    "fixture",
    host="127.0.0.1",
    port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000,
    log_level="WARNING",
)
CHANGED = os.environ.get("MCP_FIXTURE_VARIANT") == "changed"


if CHANGED:

    @server.tool()
    def add(a: int, b: int, c: int = 0) -> int:
        """Add two or three whole numbers."""
        return a + b + c

else:

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two whole numbers."""
        return a + b


@server.tool()
def shout(text: str) -> str:
    """The text in capital letters."""
    return text.upper()


@server.tool()
def refuse(reason: str) -> str:
    """Always fails with the reason given."""
    raise ValueError(f"refused: {reason}")


@server.tool()
def crash(code: int) -> str:
    """Ends the server process at once."""
    os._exit(code)


@server.tool()
def hang(seconds: int) -> str:
    """Sleeps for the given seconds before answering."""
    time.sleep(seconds)
    return "woke up"


if __name__ == "__main__":
    server.run("streamable-http" if len(sys.argv) > 1 and sys.argv[1] == "http" else "stdio")
