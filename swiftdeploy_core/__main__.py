from swiftdeploy_core.cli import main

main()
