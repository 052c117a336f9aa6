"""blocks/tableau"""
