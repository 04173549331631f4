from lightning_influence.demo.run import main

main()
