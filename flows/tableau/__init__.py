"""flows/tableau"""
