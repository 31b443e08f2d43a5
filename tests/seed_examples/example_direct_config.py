# The seed README's second example, as written; only the import line is adapted, and
# the fragment is wrapped in main() so that it can run. b"your_secret_key" is 15 bytes,
# below arraycrypto's 16-byte minimum: as written it raises ConfigError naming
# `secret_key` (tests/test_client.py checks that, and runs it with a 16-byte key too).
import asyncio

from arraycrypto import CryptoClient, CryptoConfig


async def main():
    config = CryptoConfig(
        server_url="http://localhost:8000",
        secret_key=b"your_secret_key",  # Will be base64 encoded automatically
        max_drift=60,  # Maximum allowed time drift in seconds
    )

    async with CryptoClient(config) as client:
        # Your encryption/decryption code here
        pass


asyncio.run(main())
