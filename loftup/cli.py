def main():
    print("loftup 0.1.0")
