"""The official Python SDKs (payments-py and the MCP SDK `mcp`) as the buyer of a paid MCP tool.

Usage: NVM_BACKEND_URL=<backend> python mcp_buyer.py <url of the MCP endpoint> <subscriber key>

Opens an MCP session with the official client (streamable HTTP), lists the tools (the
price of `ask` in its `_meta`), calls `ask` without paying (an `isError` result with the
PaymentRequired in `structuredContent`), mints an access token with payments-py for the
plan and agent of that PaymentRequired, calls `ask` again with the decoded token in
`_meta["x402/payment"]`, and prints one JSON line: the credits redeemed, the remaining
balance and the transaction hash. Any failed check: a message on stderr and exit code 1.
"""
import asyncio, base64, json, sys

from mcp import ClientSession
from payments_py import Payments, PaymentOptions

try:
    from mcp.client.streamable_http import streamable_http_client as open_transport
except ImportError:  # mcp before 1.24 names it streamablehttp_client
    from mcp.client.streamable_http import streamablehttp_client as open_transport
try:
    from payments_py.x402.token import decode_access_token
except ImportError:
    def decode_access_token(token):
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def check(condition, message):
    if not condition:
        print(f"mcp_buyer.py: {message}", file=sys.stderr)
        sys.exit(1)


def text_of(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def main(url, key):
    async with open_transport(url) as (read, write, _session_id):
        async with ClientSession(read, write) as session:
            await session.initialize()

            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            check("ask" in tools, f"no tool `ask` in tools/list: {sorted(tools)}")
            price = (tools["ask"].meta or {}).get("nevermined/price") or {}
            check(price.get("credits") == "1", f"`ask` is not priced 1 credit in its _meta: {tools['ask'].meta}")

            unpaid = await session.call_tool("ask", arguments={"query": "hello"})
            required = unpaid.structuredContent or {}
            check(unpaid.isError, f"the unpaid call was not an error: {text_of(unpaid)}")
            check(required.get("x402Version") == 2, f"no x402 v2 PaymentRequired: {required}")
            check(required.get("accepts"), f"the PaymentRequired accepts nothing: {required}")
            accepted = required["accepts"][0]

            payments = Payments(PaymentOptions(environment="custom", nvm_api_key=key))
            minted = payments.x402.get_x402_access_token(accepted["planId"], (accepted.get("extra") or {}).get("agentId"))
            payload = decode_access_token(minted["accessToken"])
            check(isinstance(payload, dict), f"the access token is not base64 JSON: {minted}")

            paid = await session.call_tool("ask", arguments={"query": "hello"}, meta={"x402/payment": payload})
            check(not paid.isError, f"the paid call was an error: {text_of(paid)}")
            check("42" in text_of(paid), f"no answer in the paid result: {text_of(paid)}")
            meta = paid.meta or {}
            receipt = meta.get("x402/payment-response") or {}
            credits = meta.get("nevermined/credits") or {}
            check(receipt.get("success") is True, f"the x402/payment-response is not a success: {meta}")
            check(credits.get("creditsRedeemed") == "1", f"nevermined/credits redeemed not 1: {meta}")
            print(json.dumps({"creditsRedeemed": credits["creditsRedeemed"],
                              "remainingBalance": credits.get("remainingBalance"),
                              "txHash": credits.get("txHash") or receipt.get("transaction")}))


if __name__ == "__main__":
    check(len(sys.argv) == 3, "usage: NVM_BACKEND_URL=<backend> python mcp_buyer.py <mcp url> <subscriber key>")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
