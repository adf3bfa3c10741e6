from .broker import main

main()
