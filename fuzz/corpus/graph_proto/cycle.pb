
g
x
batch
"
xAddxb"aAddax"b:b