# The seed README's error-handling example, as written; only the import line is
# adapted, and it is wrapped in a main() that takes the config file as argument.
import asyncio
import sys

from arraycrypto import (
    AuthenticationError,
    CryptoClient,
    CryptoError,
    SnapshotError,
    load_client_config,
)

config = load_client_config(sys.argv[1])


async def main():
    try:
        async with CryptoClient(config) as client:
            await client.authenticate()
            encrypted = await client.encrypt_message("data")
    except AuthenticationError:
        print("Authentication failed")
    except SnapshotError:
        print("Invalid or expired snapshot")
    except CryptoError:
        print("General encryption error")


asyncio.run(main())
