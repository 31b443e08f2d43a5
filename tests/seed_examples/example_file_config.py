# The seed README's first example, as written; only the import line is adapted
# ("from client import ..." -> "from arraycrypto import ...").
import asyncio

from arraycrypto import CryptoClient, CryptoConfig


async def main():
    # Configuration can be loaded from file
    async with CryptoClient("client_config.json") as client:
        await client.authenticate()

        # Encrypt string data
        encrypted = await client.encrypt_message("Your secret message")
        decrypted = await client.decrypt_message(encrypted)
        print(decrypted.decode("utf-8"))

        # Encrypt binary data
        binary_data = b"Your binary data"
        encrypted = await client.encrypt_message(binary_data)
        decrypted = await client.decrypt_message(encrypted)


if __name__ == "__main__":
    asyncio.run(main())
