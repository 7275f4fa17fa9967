from swiftdeploy_core.client.cli import main

main()
