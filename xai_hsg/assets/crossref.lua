-- Quarto-style cross-references for the pandoc fallback renderer.
-- Figures ("#fig-x") and tables ("#tbl-x", from a caption line ": Caption {#tbl-x}") are numbered in document
-- order, each kind on its own; "@fig-x" becomes "Figure N", "@tbl-x" becomes "Table N".
-- HTML: the caption gets a "Figure N:" / "Table N:" prefix and references become links.
-- Typst: typst numbers figures and tables itself, so references become native "@fig-x" / "@tbl-x" references.
-- An unknown "@fig-" or "@tbl-" reference is an error, as in Quarto, not a silently broken link.

local KINDS = { fig = "Figure", tbl = "Table" }
local numbers = {}   -- identifier -> number
local counts = { fig = 0, tbl = 0 }

local function is_typst() return FORMAT:match("typst") ~= nil end
local function kind_of(id) return id:match("^(%a+)%-") end

local function prefix_caption(caption, word, n)
  local prefix = pandoc.Inlines({pandoc.Strong({pandoc.Str(word), pandoc.Space(), pandoc.Str(n .. ":")}), pandoc.Space()})
  local long = caption.long
  if #long > 0 and long[1].content then
    long[1].content = prefix .. long[1].content
  else
    caption.long = pandoc.Blocks({pandoc.Plain(prefix)})
  end
end

local function number(el)
  local kind = kind_of(el.identifier or "")
  if not (kind and KINDS[kind]) then return nil end
  if (el.t == "Figure") ~= (kind == "fig") then return nil end  -- #fig- on figures, #tbl- on tables
  counts[kind] = counts[kind] + 1
  numbers[el.identifier] = counts[kind]
  if not is_typst() then prefix_caption(el.caption, KINDS[kind], counts[kind]) end
  return el
end

local function resolve_references(blocks)
  return blocks:walk({
    Cite = function(cite)
      local ids = {}
      for _, c in ipairs(cite.citations) do
        local kind = kind_of(c.id)
        if not (kind and KINDS[kind]) then return nil end  -- a bibliography citation: leave it to citeproc
        table.insert(ids, c.id)
      end
      local out = pandoc.Inlines({})
      for i, id in ipairs(ids) do
        local word = KINDS[kind_of(id)]
        if numbers[id] == nil then
          error("unknown " .. word:lower() .. " reference @" .. id .. " (nothing has the identifier #" .. id .. ")")
        end
        if i > 1 then out:insert(pandoc.Str(i == #ids and " and " or ", ")) end
        if is_typst() then
          out:insert(pandoc.RawInline("typst", "@" .. id))
        else
          out:insert(pandoc.Link({pandoc.Str(word), pandoc.Space(), pandoc.Str(tostring(numbers[id]))}, "#" .. id))
        end
      end
      return out
    end,
  })
end

function Pandoc(doc)
  doc.blocks = doc.blocks:walk({ Figure = number, Table = number })
  doc.blocks = resolve_references(doc.blocks)
  return doc
end
